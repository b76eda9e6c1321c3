#!lua
-- run_start: create a run record and its first step messages, once per admitted event.
-- KEYS[1] dedupe key  KEYS[2] outbox (unused: starting emits nothing)  KEYS[3] run hash
-- KEYS[4] run messages set  KEYS[5] run step counts hash  KEYS[6] due zset
-- KEYS[7] running runs zset  KEYS[8] flow runs set  KEYS[9] usage messages hash
-- KEYS[10] usage bytes hash  KEYS[11..10+N] the step message hash of each start message
-- ARGV[1] dedupe ttl  ARGV[2] event id prefix (unused)  ARGV[3] run id  ARGV[4] flow id
-- ARGV[5] tenant  ARGV[6] user  ARGV[7] fencing token  ARGV[8] now  ARGV[9] graph JSON
-- ARGV[10] step retries  ARGV[11] step timeout seconds  ARGV[12] trigger
-- ARGV[13] usage field (JSON [tenant,user,flow])  ARGV[14] N
-- ARGV[15..] N triples: message id, step id, data JSON
-- ARGV[15+3N] context JSON of the start messages (the rest of the run's message; '' none)
-- Returns: 'duplicate' (event already handled), 'exists' (run already started), 'started'.
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[1])) == false then
  return 'duplicate'
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  return 'exists'
end
local run_id, flow, tenant, user, now = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[8]
local n = tonumber(ARGV[14])
local context = ARGV[15 + 3 * n] or ''
redis.call('HSET', KEYS[3], 'run', run_id, 'flow', flow, 'tenant', tenant, 'user', user,
  'fencing', ARGV[7], 'status', 'running', 'started', now, 'graph', ARGV[9],
  'retries', ARGV[10], 'timeout', ARGV[11], 'trigger', ARGV[12], 'pending', n,
  'steps', 0, 'messages', n, 'bytes', 0, 'failures', 0)
local bytes = 0
for i = 1, n do
  local base = 14 + (i - 1) * 3
  local id, step, data = ARGV[base + 1], ARGV[base + 2], ARGV[base + 3]
  redis.call('HSET', KEYS[10 + i], 'run', run_id, 'flow', flow, 'step', step,
    'tenant', tenant, 'user', user, 'data', data, 'attempt', 0, 'outputs', 0, 'final', -1,
    'created', now)
  if context ~= '' then
    redis.call('HSET', KEYS[10 + i], 'context', context)
  end
  redis.call('SADD', KEYS[4], id)
  redis.call('HINCRBY', KEYS[5], step, 1)
  redis.call('ZADD', KEYS[6], now, id)
  bytes = bytes + #data
end
redis.call('HSET', KEYS[3], 'bytes', bytes)
redis.call('ZADD', KEYS[7], now, run_id)
redis.call('SADD', KEYS[8], run_id)
if n > 0 then
  redis.call('HINCRBY', KEYS[9], ARGV[13], n)
  redis.call('HINCRBY', KEYS[10], ARGV[13], bytes)
end
return 'started'
