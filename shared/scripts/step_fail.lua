#!lua
-- step_fail: a step message failed (retry it with backoff, or dead-letter it and fail the run),
-- or a run ends from outside (stop, watchdog timeout): every pending message is dead-lettered.
-- KEYS[1] dedupe key (ignored when ARGV[1] is 0)  KEYS[2] outbox  KEYS[3] run hash
-- KEYS[4] run messages set  KEYS[5] run step counts hash  KEYS[6] run seen set
-- KEYS[7] the failed message hash (mode 'end': the key of message id '')  KEYS[8] due zset
-- KEYS[9] deadlines zset  KEYS[10] running zset  KEYS[11] recent zset  KEYS[12] flow runs set
-- KEYS[13] dead letters stream  KEYS[14] the message key family (keys.step_message_family())
-- KEYS[15..14+J] join input list of each join node
-- ARGV[1] dedupe ttl (0: no dedupe)  ARGV[2] step id the message must be of ('': any)
-- ARGV[3] mode:
--   'failed'  a worker reported step.failed: retry while attempts are left
--   'timeout' the message's step timeout passed (only if its deadline is still due)
--   'abort'   no retry (its routing failed): dead-letter and fail the run
--   'end'     end the run with ARGV[11] as reason
-- ARGV[4] run id  ARGV[5] message id  ARGV[6] attempt (-1: the current one)  ARGV[7] error
-- ARGV[8] now  ARGV[9] retention seconds  ARGV[10] event source  ARGV[11] run end reason
-- ARGV[12] emit flow.execution.failed (1/0)  ARGV[13] fencing token to match (-1: any)
-- ARGV[14] backoff base seconds  ARGV[15] backoff max seconds  ARGV[16] dead letter cap
-- ARGV[17] J  ARGV[18] the event type of a failed run (flow.execution.failed)
-- Returns: 'duplicate' | 'not_running' | 'stale' | 'wrong_step' | 'retry' | 'failed'
--#include keys_common
if tonumber(ARGV[1]) > 0 and redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[1])) == false then
  return 'duplicate'
end
local mode, run_id, message_id, now = ARGV[3], ARGV[4], ARGV[5], ARGV[8]
if redis.call('HGET', KEYS[3], 'status') ~= 'running' then
  return 'not_running'
end
if tonumber(ARGV[13]) >= 0 and tonumber(redis.call('HGET', KEYS[3], 'fencing')) ~= tonumber(ARGV[13]) then
  return 'stale'
end

local function dead_letter(key, id, reason, err)
  local msg = redis.call('HMGET', key, 'flow', 'step', 'tenant', 'attempt', 'data')
  redis.call('XADD', KEYS[13], 'MAXLEN', '~', tonumber(ARGV[16]), '*', 'run', run_id,
    'flow', msg[1] or '', 'step', msg[2] or '', 'tenant', msg[3] or '',
    'messageId', id, 'attempt', msg[4] or '0', 'reason', reason, 'error', err,
    'data', msg[5] or '', 'at', now)
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[8], id)
  redis.call('ZREM', KEYS[9], id)
end

local reason, err = ARGV[11], ARGV[7]
if mode ~= 'end' then
  local owner = redis.call('HMGET', KEYS[7], 'step', 'run')
  local step_of_message = owner[1]
  if not step_of_message then
    return 'stale'
  end
  -- a message of another run (same step name) is never this run's to fail
  if (ARGV[2] ~= '' and step_of_message ~= ARGV[2]) or owner[2] ~= run_id then
    redis.call('DEL', KEYS[1])
    return 'wrong_step'
  end
  local attempt = tonumber(redis.call('HGET', KEYS[7], 'attempt'))
  if tonumber(ARGV[6]) >= 0 and tonumber(ARGV[6]) ~= attempt then
    return 'stale'
  end
  if mode == 'timeout' then
    local deadline = redis.call('ZSCORE', KEYS[9], message_id)
    if not deadline or tonumber(deadline) > tonumber(now) then
      return 'stale'
    end
  end
  redis.call('HINCRBY', KEYS[3], 'failures', 1)
  local retries = tonumber(redis.call('HGET', KEYS[3], 'retries'))
  if mode ~= 'abort' and attempt < retries then
    local delay = math.min(tonumber(ARGV[14]) * (2 ^ attempt), tonumber(ARGV[15]))
    redis.call('HSET', KEYS[7], 'attempt', attempt + 1, 'error', err)
    redis.call('ZREM', KEYS[9], message_id)
    redis.call('ZADD', KEYS[8], tonumber(now) + delay, message_id)
    return 'retry'
  end
  dead_letter(KEYS[7], message_id, reason, err)
  redis.call('SREM', KEYS[4], message_id)
end

-- The run fails: every other pending message is dead-lettered with the run's reason.
for _, id in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  dead_letter(family_key(KEYS[14], id), id, reason, mode == 'end' and err or 'run failed')
end
local run = redis.call('HMGET', KEYS[3], 'flow', 'tenant', 'user', 'fencing', 'started', 'steps')
redis.call('HSET', KEYS[3], 'status', 'failed', 'reason', reason, 'ended', now, 'pending', 0,
  'graph', '')
if ARGV[12] == '1' then
  local data = {flowId = run[1], runId = run_id, tenant = run[2], fencingToken = tonumber(run[4]),
    durationMs = math.max(0, math.floor((tonumber(now) - tonumber(run[5])) * 1000)),
    steps = tonumber(run[6]), reason = reason}
  if run[3] ~= '' then data.user = run[3] end
  redis.call('RPUSH', KEYS[2], cjson.encode({id = 'run-end-' .. run_id,
    type = ARGV[18], source = ARGV[10], data = data,
    extensions = {tenant = run[2], flowid = run[1], runid = run_id}, time = tonumber(now)}))
end
redis.call('DEL', KEYS[4], KEYS[5])
for i = 1, tonumber(ARGV[17]) do
  redis.call('DEL', KEYS[14 + i])
end
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[9]))
redis.call('EXPIRE', KEYS[6], tonumber(ARGV[9]))
redis.call('ZREM', KEYS[10], run_id)
redis.call('ZADD', KEYS[11], now, run_id)
redis.call('SREM', KEYS[12], run_id)
return 'failed'
