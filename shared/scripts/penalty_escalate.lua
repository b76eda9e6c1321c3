#!lua
-- penalty_escalate: a rule was violated; step the subject one rung up the ladder unless the
-- evidence was already punished: the same rule fired less than one window ago (the same data
-- must not be punished twice), or the subject changed step less than one base cooldown ago
-- (each step gets a moment to work). The cooldown is how long the new step holds at least
-- before it may decay: it doubles with every escalation (repeats), capped; repeats are
-- forgotten after `forget_after` without a penalty. A violation that does not escalate is
-- still noted (lastViolation): it keeps the penalty from decaying.
-- The decision, its audit entry and its events are written together.
-- KEYS[1] penalty hash of the subject   KEYS[2] penalty index (sorted set)
-- KEYS[3] audit stream                  KEYS[4] outbox of the {pol} tag
-- ARGV[1] now   ARGV[2] level   ARGV[3] subject id   ARGV[4] tenant   ARGV[5] rule name
-- ARGV[6] measured   ARGV[7] limit   ARGV[8] window (text)   ARGV[9] evidence horizon seconds
-- ARGV[10] ladder (comma separated)   ARGV[11] cooldown seconds   ARGV[12] max cooldown seconds
-- ARGV[13] forget repeats after this many clean seconds   ARGV[14] event id base
-- ARGV[15] event source   ARGV[16] event types (JSON)   ARGV[17] audit stream max length
-- ARGV[18] flow id extension ('' for none)   ARGV[19] audit action (escalate | timeout)
-- ARGV[20] the subject's member of the penalty index (keys.penalty_member: users and flows
--          with their tenant)
-- Returns {'escalated' | 'held', step after the decision ('' for none), until}
--#include penalty_common
local EVENTS = events_of(ARGV[16])
local key = KEYS[1]
local now = tonumber(ARGV[1])
local level, id, tenant, rule = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local horizon = tonumber(ARGV[9])
local ladder = ladder_of(ARGV[10])

local step = redis.call('HGET', key, 'step')
local until_at = tonumber(redis.call('HGET', key, 'until') or '0') or 0
local since = tonumber(redis.call('HGET', key, 'since') or '0') or 0
local fired = tonumber(redis.call('HGET', key, 'fired:' .. rule) or '')
redis.call('HSET', key, 'lastViolation', now)
if (step and now < since + tonumber(ARGV[11])) or (fired and now < fired + horizon) then
  return {'held', step or '', tostring(until_at)}
end

local position = position_on(ladder, step)
local repeats = tonumber(redis.call('HGET', key, 'repeats') or '0') or 0
if not step then
  local restored = tonumber(redis.call('HGET', key, 'restoredAt') or '')
  if restored and now - restored >= tonumber(ARGV[13]) then
    repeats = 0
  end
end
local cooldown = math.min(tonumber(ARGV[11]) * 2 ^ repeats, tonumber(ARGV[12]))
local new_step = ladder[math.min(position + 1, #ladder)]
local new_until = now + cooldown

redis.call('HSET', key, 'step', new_step, 'until', new_until, 'since', now, 'rule', rule,
  'measured', ARGV[6], 'limit', ARGV[7], 'window', ARGV[8], 'tenant', tenant, 'level', level,
  'id', id, 'repeats', repeats + 1, 'cooldown', cooldown, 'fired:' .. rule, now)
redis.call('HDEL', key, 'restoredAt')
redis.call('PERSIST', key)
redis.call('ZADD', KEYS[2], now, ARGV[20])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[17], '*', 'time', now, 'action', ARGV[19],
  'level', level, 'subject', id, 'tenant', tenant, 'rule', rule, 'measured', ARGV[6],
  'limit', ARGV[7], 'window', ARGV[8], 'penalty', new_step, 'previous', step or '',
  'until', new_until, 'actor', 'policy-check')

local subject = {level = level, id = id}
local stamp = string.format('%.0f', now * 1000)
local function event(kind, event_type, data)
  return outbox_event(ARGV[14] .. '-' .. kind .. '-' .. stamp, event_type,
    ARGV[15], data, tenant, ARGV[18], now)
end
redis.call('RPUSH', KEYS[4], event('violation', EVENTS.violation, {subject = subject,
  rule = rule, measured = tonumber(ARGV[6]), limit = tonumber(ARGV[7]), window = ARGV[8]}))
if EVENTS.steps[new_step] then
  redis.call('RPUSH', KEYS[4], event('penalty', EVENTS.steps[new_step], {subject = subject,
    penalty = new_step, ['until'] = new_until, rule = rule}))
end
return {'escalated', new_step, tostring(new_until)}
