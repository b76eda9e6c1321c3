#!lua
-- flow_start_hub_fire: one due time of a flow whose cron the hub's scheduler owns
-- (CRON_OWNER=hub), fired as our own ticks fire theirs: the same overlap policy (skip,
-- buffer_one, allow), waiting cap and fair admission; the run is a cron run whose id is
-- flow@due, so the same due time sent twice is one run.
-- KEYS, ARGV[1..8]: see flow_start_common.
-- ARGV[9] flow id   ARGV[10] due time (epoch s)   ARGV[11] run limit (s)
-- ARGV[12] overlap policy   ARGV[13] tenant   ARGV[14] user   ARGV[15] msg (JSON text)
-- Returns: {'duplicate'} | {admitted | deferred | buffered | skipped}
--#include flow_start_common
--#include flow_start_lease
--#include flow_start_queue
if already_handled() then
  return { 'duplicate' }
end
local result = fire_cron(ARGV[FIRST_ARG], tonumber(ARGV[FIRST_ARG + 1]),
  tonumber(ARGV[FIRST_ARG + 2]), ARGV[FIRST_ARG + 3], ARGV[FIRST_ARG + 4], ARGV[FIRST_ARG + 5],
  ARGV[FIRST_ARG + 6])
flush()
mark_handled()
return { result }
