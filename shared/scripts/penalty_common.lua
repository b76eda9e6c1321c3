#!lua
-- penalty_common: helpers shared by the penalty scripts (each includes this file).
-- RANK orders the steps as shared/model/penalties.py does. The event types come from the
-- caller (events_of: the JSON of penalties.EVENT_TYPES_JSON): `steps` names the event of each
-- step (warn has none; stepping down to warn or to nothing announces `restored`), `violation`
-- the event of every violation.
local RANK = {warn = 1, throttle = 2, deprioritize = 3, suspend = 4}
local function events_of(text)
  return cjson.decode(text)
end

-- the ladder of the policy, from its comma-separated text
local function ladder_of(text)
  local ladder = {}
  for rung in string.gmatch(text, '[^,]+') do
    ladder[#ladder + 1] = rung
  end
  return ladder
end

-- how many rungs of the ladder are at or below `step` (0 for no step)
local function position_on(ladder, step)
  local position = 0
  if step then
    for _, rung in ipairs(ladder) do
      if RANK[rung] <= RANK[step] then
        position = position + 1
      end
    end
  end
  return position
end

-- an outbox entry (OutgoingEvent JSON) with the tenant and, for a flow, the flowid extension
local function outbox_event(id, event_type, source, data, tenant, flow_id, now)
  local extensions = {tenant = tenant}
  if flow_id ~= '' then
    extensions.flowid = flow_id
  end
  return cjson.encode({id = id, type = event_type, source = source, data = data,
    extensions = extensions, time = now})
end
