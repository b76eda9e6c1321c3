#!lua
-- flow_start_unschedule: flow.stopping drops the flow's schedule and its waiting runs (each
-- announced as skipped, reason flow_stopped, their leases freed). Running runs end through
-- step-execute.
-- KEYS, ARGV[1..8]: see flow_start_common.
-- ARGV[9] flow id
-- Returns: {'duplicate'} | {'done', waiting runs dropped}
--#include flow_start_common
--#include flow_start_lease
--#include flow_start_queue
if already_handled() then
  return { 'duplicate' }
end
local flow = ARGV[FIRST_ARG]
local buffered = buffered_of(flow)
if buffered then
  local due = tonumber(string.sub(buffered, 1, string.find(buffered, '|', 1, true) - 1))
  local packed = schedule_of(flow)
  local tenant = ''
  if packed then
    tenant = select(4, schedule_unpack(packed))
  end
  not_started('skipped', cron_run(flow, due, 0, tenant, ''), 'flow_stopped')
end
schedule_forget(flow)
redis.call('ZREM', K.due, flow)
redis.call('SREM', K.deployed, flow)
local dropped = 0
for _, user in ipairs(redis.call('SMEMBERS', queue_users_key(flow))) do
  local queue = queue_key(flow, user)
  local tenant = nil
  for _, run_id in ipairs(redis.call('LRANGE', queue, 0, -1)) do
    local raw = redis.call('HGET', K.waiting, run_id)
    if raw then
      local run = cjson.decode(raw)
      tenant = run.t
      redis.call('HDEL', K.waiting, run_id)
      count_add(limits(run.t).waiting_field, -1)
      if run.q == 1 then  -- a waiting cron run holds the lease: a restarted flow needs it
        lease_release(lease_key(flow), run.k)
      end
      not_started('skipped', run, 'flow_stopped')
      dropped = dropped + 1
    end
  end
  redis.call('DEL', queue)
  if tenant then
    deactivate(flow, tenant, user)
  end
end
redis.call('DEL', queue_users_key(flow))
flush()
mark_handled()
return { 'done', dropped }
