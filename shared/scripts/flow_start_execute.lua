#!lua
-- flow_start_execute: a flow.execute run is admitted or waits its fair turn; never skipped.
-- KEYS, ARGV[1..8]: see flow_start_common.
-- ARGV[9] run id   ARGV[10] flow id   ARGV[11] tenant   ARGV[12] user
-- ARGV[13] run limit (s)   ARGV[14] msg (JSON text)
-- Returns: {'duplicate'} | {'full', waiting} (nothing stored: answer 429) |
--          {'admitted'|'deferred', fencing token}
--#include flow_start_common
--#include flow_start_lease
--#include flow_start_queue
if already_handled() then
  return { 'duplicate' }
end
local tenant = ARGV[FIRST_ARG + 2]
if waiting_full(tenant) then
  return { 'full', counter(limits(tenant).waiting_field) }
end
local run = {
  id = ARGV[FIRST_ARG], f = ARGV[FIRST_ARG + 1], t = tenant, u = ARGV[FIRST_ARG + 3],
  c = 'execute', s = NOW, l = tonumber(ARGV[FIRST_ARG + 4]), m = ARGV[FIRST_ARG + 5],
  k = next_token(),
}
local result = submit(run, redis.call('SISMEMBER', K.deployed, run.f) == 1)
flush()
mark_handled()
return { result, run.k }
