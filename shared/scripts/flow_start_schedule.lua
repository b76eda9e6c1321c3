#!lua
-- flow_start_schedule: store (or drop) a flow's cron schedule on flow.starting. The due time
-- is kept when cron, zone and offset are unchanged, so a re-sent flow does not move it.
-- KEYS, ARGV[1..8]: see flow_start_common.
-- ARGV[9] flow id   ARGV[10] cron ('' = no schedule)   ARGV[11] zone   ARGV[12] offset (s)
-- ARGV[13] tenant   ARGV[14] user   ARGV[15] next due (epoch s)
-- ARGV[16] overlap policy   ARGV[17] catch-up window (s)   ARGV[18] max run (s)
--          (the flow's own settings; '' = the tenant's default, read at decision time)
-- Returns: {'duplicate'} | {'dropped'} | {'kept'} | {'scheduled'}
--#include flow_start_common
if already_handled() then
  return { 'duplicate' }
end
local flow = ARGV[FIRST_ARG]
local cron = ARGV[FIRST_ARG + 1]
local sched = sched_key(flow)
local result
if cron == '' then
  redis.call('DEL', sched)
  redis.call('ZREM', K.due, flow)
  result = 'dropped'
else
  local zone, offset = ARGV[FIRST_ARG + 2], ARGV[FIRST_ARG + 3]
  local current = redis.call('HMGET', sched, 'c', 'z', 'o')
  redis.call('HSET', sched, 'c', cron, 'z', zone, 'o', offset,
    't', ARGV[FIRST_ARG + 4], 'u', ARGV[FIRST_ARG + 5])
  local optional = { p = ARGV[FIRST_ARG + 7], w = ARGV[FIRST_ARG + 8], m = ARGV[FIRST_ARG + 9] }
  for field, value in pairs(optional) do
    if value == '' then
      redis.call('HDEL', sched, field)
    else
      redis.call('HSET', sched, field, value)
    end
  end
  if current[1] == cron and current[2] == zone and current[3] == offset
      and redis.call('ZSCORE', K.due, flow) then
    result = 'kept'
  else
    redis.call('ZADD', K.due, ARGV[FIRST_ARG + 6], flow)
    result = 'scheduled'
  end
end
flush()
mark_handled()
return { result }
