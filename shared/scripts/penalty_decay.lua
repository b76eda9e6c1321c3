#!lua
-- penalty_decay: after clean behaviour step the subject one rung down; the last rung restores.
-- Clean means: the cooldown is over and no violation was seen for `decay_after` seconds
-- since the last change (or the last violation, whichever is later).
-- KEYS[1] penalty hash of the subject   KEYS[2] penalty index (sorted set)
-- KEYS[3] audit stream                  KEYS[4] outbox of the {pol} tag
-- ARGV[1] now   ARGV[2] ladder (comma separated)   ARGV[3] decay_after seconds
-- ARGV[4] TTL of a restored subject's history   ARGV[5] event id base   ARGV[6] event source
-- ARGV[7] event types (JSON)   ARGV[8] audit stream max length   ARGV[9] flow id extension
-- ARGV[10] index member (keys.penalty_member)
-- Returns {'decayed' | 'restored' | 'held' | 'none', step after ('' for none), until}
--#include penalty_common
local EVENTS = events_of(ARGV[7])
local key = KEYS[1]
local now = tonumber(ARGV[1])

local step = redis.call('HGET', key, 'step')
if not step then
  redis.call('ZREM', KEYS[2], ARGV[10])
  return {'none', '', '0'}
end
local until_at = tonumber(redis.call('HGET', key, 'until') or '0') or 0
local since = tonumber(redis.call('HGET', key, 'since') or '0') or 0
local last = tonumber(redis.call('HGET', key, 'lastViolation') or '0') or 0
if now < until_at or now - math.max(since, last) < tonumber(ARGV[3]) then
  return {'held', step, tostring(until_at)}
end

local ladder = ladder_of(ARGV[2])
local position = position_on(ladder, step)

local level = redis.call('HGET', key, 'level') or ''
local id = redis.call('HGET', key, 'id') or ''
local tenant = redis.call('HGET', key, 'tenant') or ''
local rule = redis.call('HGET', key, 'rule') or ''
local new_step, action
if position <= 1 then
  new_step, action = 'none', 'restored'
  redis.call('HDEL', key, 'step', 'until')
  redis.call('HSET', key, 'restoredAt', now, 'since', now)
  redis.call('EXPIRE', key, tonumber(ARGV[4]))
  redis.call('ZREM', KEYS[2], ARGV[10])
else
  new_step, action = ladder[position - 1], 'decayed'
  redis.call('HSET', key, 'step', new_step, 'since', now, 'until', now)
  redis.call('ZADD', KEYS[2], now, ARGV[10])
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[8], '*', 'time', now, 'action',
  action == 'restored' and 'restore' or 'decay', 'level', level, 'subject', id,
  'tenant', tenant, 'rule', rule, 'measured', redis.call('HGET', key, 'measured') or '',
  'limit', redis.call('HGET', key, 'limit') or '', 'window', redis.call('HGET', key, 'window') or '',
  'penalty', new_step, 'previous', step, 'until', '', 'actor', 'policy-check')

local data = {subject = {level = level, id = id}, penalty = new_step, rule = rule}
if new_step ~= 'none' then
  data['until'] = now
end
redis.call('RPUSH', KEYS[4], outbox_event(
  ARGV[5] .. '-decay-' .. string.format('%.0f', now * 1000),
  EVENTS.steps[new_step] or EVENTS.restored, ARGV[6], data, tenant, ARGV[9], now))
return {action, new_step == 'none' and '' or new_step, tostring(now)}
