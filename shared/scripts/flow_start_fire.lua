#!lua
-- flow_start_fire: claim due schedule entries and fire them, atomically. Each entry is
-- claimed only if its score is still the due time the caller read (so concurrent ticks fire
-- each due time once); then the next due time is stored, older due times are announced as
-- missed (once), and the due time is fired under the flow's overlap policy.
-- KEYS, ARGV[1..8]: see flow_start_common (ARGV[3] 0: ticks are not deduped).
-- ARGV[9] the number P of distinct plans
-- ARGV[10..9+P] the plans: due read, due to fire ('' none), first missed due ('' none), next
--           due ('' drops the entry), run limit (s), overlap policy, catch-up window (s),
--           joined by \31 (most entries of a tick share one: each is sent and parsed once)
-- ARGV[10+P..] one per entry (a tick sends a thousand): the index of its plan (from 1), the
--           byte length of the tenant, the byte length of the user, each followed by \31,
--           then tenant, user and flow id back to back (as read with the due time; a stopped
--           or rescheduled flow has another score by then, so the claim fails)
-- Returns: {fired, claimed-by-others, admitted, deferred, skipped, missed, 1 when an entry
--          is still due at now (another batch to read) else 0}
--#include flow_start_common
--#include flow_start_lease
--#include flow_start_queue
local stats = { fired = 0, lost = 0, admitted = 0, deferred = 0, skipped = 0, missed = 0 }
local PLAN = '^([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31'
  .. '([^\31]*)$'
local ENTRY = '^(%d+)\31(%d+)\31(%d+)\31()'
local plans = {}
local plan_count = tonumber(ARGV[FIRST_ARG])
for p = 1, plan_count do
  local read, fire, missed, next_due, limit, overlap, window =
    string.match(ARGV[FIRST_ARG + p], PLAN)
  if not read then
    return redis.error_reply('flow_start_fire: malformed plan ' .. p)
  end
  plans[p] = { read, fire, missed, next_due, tonumber(limit), overlap, window }
end
local flows, entry_plans, tenants, users = {}, {}, {}, {}  -- per entry (no table each)
for i = FIRST_ARG + plan_count + 1, #ARGV do
  local packed = ARGV[i]
  local index, tenant_len, user_len, at = string.match(packed, ENTRY)
  local plan = index and plans[tonumber(index)]
  if not plan then
    return redis.error_reply('flow_start_fire: malformed entry ' .. (i - FIRST_ARG - plan_count))
  end
  local user_at = at + tonumber(tenant_len)
  local flow_at = user_at + tonumber(user_len)
  local flow = string.sub(packed, flow_at)
  local n = #flows + 1
  flows[n], entry_plans[n] = flow, plan
  tenants[n] = string.sub(packed, at, user_at - 1)
  users[n] = string.sub(packed, user_at, flow_at - 1)
end
-- the claims' scores and the deployed flags, in two calls instead of two per entry
local scores, deployed = {}, {}
for first = 1, #flows, 1000 do
  local last = math.min(first + 999, #flows)
  local chunk_scores = redis.call('ZMSCORE', K.due, unpack(flows, first, last))
  local chunk_deployed = redis.call('SMISMEMBER', K.deployed, unpack(flows, first, last))
  for j = 1, last - first + 1 do
    scores[first + j - 1] = chunk_scores[j]
    deployed[first + j - 1] = chunk_deployed[j] == 1
  end
end
flow_counts_prefetch(flows)
for n, flow in ipairs(flows) do
  local tenant, user = tenants[n], users[n]
  local read, fire, missed, next_due, limit, overlap, window = unpack(entry_plans[n])
  local score = scores[n]
  if not score or tonumber(score) ~= tonumber(read) then
    stats.lost = stats.lost + 1
  elseif next_due == '' then
    redis.call('ZREM', K.due, flow)  -- no longer computable
  else
    DUE[#DUE + 1] = next_due
    DUE[#DUE + 1] = flow
    DEPLOYED[flow] = deployed[n]
    if missed ~= '' then
      local run = cron_run(flow, tonumber(missed), limit, tenant, user)
      not_started('missed', run, 'older than the catch-up window of ' .. window .. 's')
      stats.missed = stats.missed + 1
    end
    if fire ~= '' then
      local result = fire_cron(flow, tonumber(fire), limit, overlap, tenant, user)
      stats.fired = stats.fired + 1
      if result == 'admitted' then
        stats.admitted = stats.admitted + 1
      elseif result == 'deferred' or result == 'buffered' then
        stats.deferred = stats.deferred + 1
      else
        stats.skipped = stats.skipped + 1
      end
    end
  end
end
flush()
local more = #redis.call('ZRANGEBYSCORE', K.due, '-inf', NOW, 'LIMIT', 0, 1)
return { stats.fired, stats.lost, stats.admitted, stats.deferred, stats.skipped, stats.missed,
  more }
