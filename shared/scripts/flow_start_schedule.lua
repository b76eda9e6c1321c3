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
local result
if cron == '' then
  schedule_forget(flow)
  redis.call('ZREM', K.due, flow)
  result = 'dropped'
else
  local zone, offset = ARGV[FIRST_ARG + 2], ARGV[FIRST_ARG + 3]
  local current = schedule_of(flow)
  local old = sched_key(flow)
  if redis.call('EXISTS', old) == 1 then  -- the previous release's form: moved, buffer too
    local buffered = redis.call('HGET', old, 'b')
    if buffered then
      redis.call('HSET', K.buffered, flow, buffered)
    end
    redis.call('DEL', old)
  end
  redis.call('HSET', K.schedules, flow, schedule_pack(cron, zone, offset, ARGV[FIRST_ARG + 4],
    ARGV[FIRST_ARG + 5], ARGV[FIRST_ARG + 7], ARGV[FIRST_ARG + 8], ARGV[FIRST_ARG + 9]))
  local current_cron, current_zone, current_offset
  if current then
    current_cron, current_zone, current_offset = schedule_unpack(current)
  end
  if current_cron == cron and current_zone == zone and current_offset == offset
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
