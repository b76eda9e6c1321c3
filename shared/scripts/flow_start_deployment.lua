#!lua
-- flow_start_deployment: only deployed flows run. flow.started wakes the flow's waiting runs;
-- flow.failed / flow.stopped park them (they keep waiting, capped per tenant).
-- KEYS, ARGV[1..8]: see flow_start_common.
-- ARGV[9] flow id   ARGV[10] 'started' | 'down'
-- Returns: {'duplicate'} | {'done', runs admitted}
--#include flow_start_common
--#include flow_start_lease
--#include flow_start_queue
if already_handled() then
  return { 'duplicate' }
end
local flow = ARGV[FIRST_ARG]
local started = ARGV[FIRST_ARG + 1] == 'started'
if started then
  redis.call('SADD', K.deployed, flow)
else
  redis.call('SREM', K.deployed, flow)
end
for _, user in ipairs(redis.call('SMEMBERS', queue_users_key(flow))) do
  local head = redis.call('LINDEX', queue_key(flow, user), 0)
  local raw = head and redis.call('HGET', K.waiting, head)
  if raw then
    local tenant = cjson.decode(raw).t
    if started then
      activate(flow, tenant, user)
    else
      deactivate(flow, tenant, user)
    end
  end
end
dispatch()
flush()
mark_handled()
return { 'done', admitted_count }
