#!lua
-- flow_start_charge: by usage, a run is charged while it runs, not only when it ends (included
-- after flow_start_queue by flow_start_dispatch, which ticks call). K.charged holds every
-- admitted run → the time it is charged up to: admission + what its estimate covers, then
-- the time of its last charge, +inf once charged up to its limit (settle() reads it and
-- adds only the rest). One call charges at most CHARGE_LOOK runs, those charged longest ago,
-- each at most once per CHARGE_EVERY seconds: the slot-seconds since its last charge go to
-- its tenant, user and flow (charge()), so a tenant whose runs are long falls behind in fair
-- order while they run.
local CHARGE_EVERY = 10
local CHARGE_LOOK = 100

local function charge_running()
  if not BY_USAGE then
    return 0
  end
  local due = redis.call('ZRANGEBYSCORE', K.charged, '-inf', NOW - CHARGE_EVERY, 'WITHSCORES',
    'LIMIT', 0, CHARGE_LOOK)
  if #due == 0 then
    return 0
  end
  local ids = {}
  for i = 1, #due, 2 do
    ids[#ids + 1] = due[i]
  end
  local raws = redis.call('HMGET', K.runs, unpack(ids))
  local sums, order = {}, {}  -- one charge per (tenant, user, flow): runs of a flow add up
  for n, run_id in ipairs(ids) do
    local raw = raws[n]
    if raw then
      local run = cjson.decode(raw)
      local through = tonumber(due[2 * n])
      local upto = math.min(NOW, run.a + run.l)
      if upto > through then
        local group = pair(pair(run.t, run.u), run.f)
        local sum = sums[group]
        if not sum then
          sum = { run = run, delta = 0 }
          sums[group] = sum
          order[#order + 1] = group
        end
        sum.delta = sum.delta + (upto - through) * limits(run.t).factor
      end
      CHARGED[#CHARGED + 1] = upto < run.a + run.l and upto or math.huge
      CHARGED[#CHARGED + 1] = run_id
    else
      redis.call('ZREM', K.charged, run_id)  -- released without settling (never expected)
    end
  end
  for _, group in ipairs(order) do
    charge(sums[group].run, sums[group].delta)
  end
  return #ids
end
