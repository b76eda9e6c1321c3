#!lua
-- flow_start_lease_release: give a lease back, only with the token it was acquired with.
-- KEYS[1] lease key
-- ARGV[1] fencing token
-- Returns: 1 released, 0 refused (gone, or held by a newer run: a stale token).
--#include flow_start_lease
return lease_release(KEYS[1], tonumber(ARGV[1]))
