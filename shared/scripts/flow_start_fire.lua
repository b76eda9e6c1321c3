#!lua
-- flow_start_fire: claim due schedule entries and fire them, atomically. Each entry is
-- claimed only if its score is still the due time the caller read (so concurrent ticks fire
-- each due time once); then the next due time is stored, older due times are announced as
-- missed (once), and the due time is fired under the flow's overlap policy.
-- KEYS, ARGV[1..8]: see flow_start_common (ARGV[3] 0: ticks are not deduped).
-- ARGV[9..] 10 per entry: flow, due read, due to fire ('' none), first missed due ('' none),
--           next due ('' drops the entry), run limit (s), overlap policy, catch-up window (s),
--           tenant, user (as read with the due time; a stopped or rescheduled flow has
--           another score by then, so the claim fails)
-- Returns: {fired, claimed-by-others, admitted, deferred, skipped, missed}
--#include flow_start_common
--#include flow_start_lease
--#include flow_start_queue
local stats = { fired = 0, lost = 0, admitted = 0, deferred = 0, skipped = 0, missed = 0 }
for i = FIRST_ARG, #ARGV, 10 do
  local flow = ARGV[i]
  local score = redis.call('ZSCORE', K.due, flow)
  if not score or tonumber(score) ~= tonumber(ARGV[i + 1]) then
    stats.lost = stats.lost + 1
  elseif ARGV[i + 4] == '' then
    redis.call('ZREM', K.due, flow)  -- no longer computable
  else
    DUE[#DUE + 1] = ARGV[i + 4]
    DUE[#DUE + 1] = flow
    local tenant, user = ARGV[i + 8], ARGV[i + 9]
    local limit = tonumber(ARGV[i + 5])
    if ARGV[i + 3] ~= '' then
      local missed = cron_run(flow, tonumber(ARGV[i + 3]), limit, tenant, user)
      not_started('missed', missed, 'older than the catch-up window of '
        .. ARGV[i + 7] .. 's')
      stats.missed = stats.missed + 1
    end
    if ARGV[i + 2] ~= '' then
      local result = fire_cron(flow, tonumber(ARGV[i + 2]), limit, ARGV[i + 6], tenant, user)
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
return { stats.fired, stats.lost, stats.admitted, stats.deferred, stats.skipped, stats.missed }
