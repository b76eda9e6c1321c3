#!lua
-- flow_start_lease_acquire: take a flow's run lease if it is free (or expired).
-- KEYS[1] lease key   KEYS[2] fencing counter
-- ARGV[1] run id   ARGV[2] TTL in seconds (the run limit)   ARGV[3] now (epoch s)
-- Returns: the new fencing token, or nil when another run holds the lease.
--#include flow_start_lease
return lease_acquire(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
