#!lua
-- penalty_lift: an operator lifts a subject's penalty at once (audited); repeats start over.
-- KEYS[1] penalty hash of the subject   KEYS[2] penalty index (sorted set)
-- KEYS[3] audit stream                  KEYS[4] outbox of the {pol} tag
-- ARGV[1] now   ARGV[2] actor   ARGV[3] TTL of the lifted subject's history
-- ARGV[4] event id base   ARGV[5] event source   ARGV[6] event types (JSON)
-- ARGV[7] audit stream max length   ARGV[8] flow id extension   ARGV[9] index member (penalty_member)
-- ARGV[10] level   ARGV[11] subject id
-- Returns the step that was lifted, or '' when the subject had no penalty
--#include penalty_common
local EVENTS = events_of(ARGV[6])
local key = KEYS[1]
local now = tonumber(ARGV[1])
local step = redis.call('HGET', key, 'step')
if not step then
  redis.call('ZREM', KEYS[2], ARGV[9])
  return ''
end
local tenant = redis.call('HGET', key, 'tenant') or ''
local rule = redis.call('HGET', key, 'rule') or ''
redis.call('HDEL', key, 'step', 'until')
redis.call('HSET', key, 'restoredAt', now, 'since', now, 'repeats', 0, 'liftedBy', ARGV[2])
redis.call('EXPIRE', key, tonumber(ARGV[3]))
redis.call('ZREM', KEYS[2], ARGV[9])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 'time', now, 'action', 'lift',
  'level', ARGV[10], 'subject', ARGV[11], 'tenant', tenant, 'rule', rule,
  'measured', redis.call('HGET', key, 'measured') or '', 'limit',
  redis.call('HGET', key, 'limit') or '', 'window', redis.call('HGET', key, 'window') or '',
  'penalty', 'none', 'previous', step, 'until', '', 'actor', ARGV[2])
redis.call('RPUSH', KEYS[4], outbox_event(
  ARGV[4] .. '-lift-' .. string.format('%.0f', now * 1000), EVENTS.restored,
  ARGV[5], {subject = {level = ARGV[10], id = ARGV[11]}, penalty = 'none', rule = rule},
  tenant, ARGV[8], now))
return step
