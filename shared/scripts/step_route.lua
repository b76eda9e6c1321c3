#!lua
-- step_route: record one output of a step message (step.completed) and route it, atomically:
-- dedupe by event and by messageId:seq, create the messages its edges lead to, buffer join
-- inputs, end the message after its final output, fire join nodes whose upstream is done, and
-- complete the run (outbox: flow.execution.completed) when nothing is pending any more.
-- KEYS[1] dedupe key  KEYS[2] outbox  KEYS[3] run hash  KEYS[4] run messages set
-- KEYS[5] run step counts hash  KEYS[6] run seen set  KEYS[7] the completed message hash
-- KEYS[8] due zset  KEYS[9] deadlines zset  KEYS[10] running zset  KEYS[11] recent zset
-- KEYS[12] flow runs set  KEYS[13] usage messages hash  KEYS[14] usage bytes hash
-- KEYS[15..14+J] join input list of each join node
-- KEYS[15+J..14+2J] message hash the join node would fire (one candidate per join node)
-- KEYS[15+2J..14+2J+M] message hash of each new message
-- KEYS[15+2J+M] the tenants' queued-bytes gauge (hash tenant -> bytes, measured by the tick)
-- ARGV[1] dedupe ttl  ARGV[2] step id the sender's token names  ARGV[3] run id
-- ARGV[4] message id
-- ARGV[5] seq  ARGV[6] final (1/0)  ARGV[7] now  ARGV[8] retention seconds
-- ARGV[9] usage field  ARGV[10] event source  ARGV[11] J  ARGV[12] M  ARGV[13] K
-- ARGV[14] the event type of a completed run (flow.execution.completed)
-- ARGV[15] the most messages the run may have pending (its tenant's
--          max_pending_messages_per_run; '' = unbounded)
-- then J triples: join node id, join message id, ancestors (JSON array of step ids)
-- then M triples: message id, step id, data JSON
-- then K triples: join index (1..J), source step id, data JSON
-- then the most bytes the tenant's step queues may hold (its max_queued_bytes; '' = unbounded)
-- Returns: 'duplicate' | 'not_running' | 'stale' (message already ended) | 'seen'
--          | 'wrong_step' (the message is another step's or another run's: nothing changes)
--          | 'routed' | 'completed'
--          | 'over_budget' (the run would pass ARGV[15] pending messages: nothing changes, the
--            sender retries once the run's steps have worked some off)
--          | 'over_queued_bytes' (the tenant's queues held more than its max_queued_bytes
--            when last measured: nothing changes, the sender retries once they were worked off)
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[1])) == false then
  return 'duplicate'
end
if redis.call('HGET', KEYS[3], 'status') ~= 'running' then
  return 'not_running'
end
local owner = redis.call('HMGET', KEYS[7], 'step', 'run')
local step_of_message = owner[1]
if not step_of_message then
  return 'stale'
end
-- the token names the run (ARGV[3]) and step (ARGV[2]): another run's message of the same
-- step name is not the sender's to end
if step_of_message ~= ARGV[2] or owner[2] ~= ARGV[3] then
  redis.call('DEL', KEYS[1])
  return 'wrong_step'
end
local run_id, message_id, seq, now = ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[7]
if redis.call('SADD', KEYS[6], message_id .. ':' .. seq) == 0 then
  return 'seen'
end
local j, m, k = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13])
local max_pending = tonumber(ARGV[15])
if max_pending then
  -- at most m new messages and one per join node; this output may end its own message
  local pending_now = tonumber(redis.call('HGET', KEYS[3], 'pending') or '0') or 0
  local ending = ARGV[6] == '1' and 1 or 0
  if m > 0 and pending_now - ending + m + j > max_pending then
    redis.call('SREM', KEYS[6], message_id .. ':' .. seq)
    redis.call('DEL', KEYS[1])
    return 'over_budget'
  end
end
local max_queued = tonumber(ARGV[15 + (j + m + k) * 3 + 1])
if max_queued and m > 0 then
  -- the gauge is measured, not counted: it lags by at most one pass of the tick
  local tenant_of_run = redis.call('HGET', KEYS[3], 'tenant')
  local queued = tonumber(redis.call('HGET', KEYS[15 + 2 * j + m], tenant_of_run) or '0') or 0
  if queued > max_queued then
    redis.call('SREM', KEYS[6], message_id .. ':' .. seq)
    redis.call('DEL', KEYS[1])
    return 'over_queued_bytes'
  end
end
local run = redis.call('HMGET', KEYS[3], 'flow', 'tenant', 'user')
local flow, tenant, user = run[1], run[2], run[3]
local created, created_bytes = 0, 0

local function add_message(key, id, step, data)
  redis.call('HSET', key, 'run', run_id, 'flow', flow, 'step', step, 'tenant', tenant,
    'user', user, 'data', data, 'attempt', 0, 'outputs', 0, 'final', -1, 'created', now)
  redis.call('SADD', KEYS[4], id)
  redis.call('HINCRBY', KEYS[5], step, 1)
  redis.call('ZADD', KEYS[8], now, id)
  created = created + 1
  created_bytes = created_bytes + #data
end

local join_base, msg_base = 15, 15 + j * 3
local input_base = msg_base + m * 3
for i = 1, m do
  local b = msg_base + (i - 1) * 3
  add_message(KEYS[14 + 2 * j + i], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3])
end
for i = 1, k do
  local b = input_base + (i - 1) * 3
  local index = tonumber(ARGV[b + 1])
  redis.call('RPUSH', KEYS[14 + index], ARGV[b + 2] .. '\n' .. ARGV[b + 3])
end

-- The message ends once its final output and every output before it are routed.
local outputs = redis.call('HINCRBY', KEYS[7], 'outputs', 1)
if ARGV[6] == '1' then
  redis.call('HSET', KEYS[7], 'final', seq)
end
local final = tonumber(redis.call('HGET', KEYS[7], 'final'))
local ended = 0
if final >= 0 and outputs >= final + 1 then
  local step = redis.call('HGET', KEYS[7], 'step')
  redis.call('DEL', KEYS[7])
  redis.call('SREM', KEYS[4], message_id)
  redis.call('HINCRBY', KEYS[5], step, -1)
  redis.call('ZREM', KEYS[8], message_id)
  redis.call('ZREM', KEYS[9], message_id)
  redis.call('HINCRBY', KEYS[3], 'steps', 1)
  ended = 1
end

-- Join nodes fire once nothing upstream of them is pending.
for i = 1, j do
  local b = join_base + (i - 1) * 3
  local list = KEYS[14 + i]
  if redis.call('LLEN', list) > 0 then
    local ready = true
    for _, ancestor in ipairs(cjson.decode(ARGV[b + 3])) do
      if tonumber(redis.call('HGET', KEYS[5], ancestor) or '0') > 0 then
        ready = false
        break
      end
    end
    if ready then
      local order, values = {}, {}
      for _, entry in ipairs(redis.call('LRANGE', list, 0, -1)) do
        local cut = string.find(entry, '\n', 1, true)
        local source, data = string.sub(entry, 1, cut - 1), string.sub(entry, cut + 1)
        if values[source] == nil then
          values[source] = {}
          table.insert(order, source)
        end
        table.insert(values[source], data)
      end
      local parts = {}
      for _, source in ipairs(order) do
        local datas = values[source]
        local value = datas[1]
        if #datas > 1 then
          value = '[' .. table.concat(datas, ',') .. ']'
        end
        table.insert(parts, cjson.encode(source) .. ':' .. value)
      end
      redis.call('DEL', list)
      add_message(KEYS[14 + j + i], ARGV[b + 2], ARGV[b + 1], '{' .. table.concat(parts, ',') .. '}')
    end
  end
end

local pending = redis.call('HINCRBY', KEYS[3], 'pending', created - ended)
if created > 0 then
  redis.call('HINCRBY', KEYS[3], 'messages', created)
  redis.call('HINCRBY', KEYS[3], 'bytes', created_bytes)
  redis.call('HINCRBY', KEYS[13], ARGV[9], created)
  redis.call('HINCRBY', KEYS[14], ARGV[9], created_bytes)
end
if pending > 0 then
  return 'routed'
end

-- Nothing pending: the run is complete.
local info = redis.call('HMGET', KEYS[3], 'fencing', 'started', 'steps')
redis.call('HSET', KEYS[3], 'status', 'completed', 'ended', now, 'graph', '')
local data = {flowId = flow, runId = run_id, tenant = tenant, fencingToken = tonumber(info[1]),
  durationMs = math.max(0, math.floor((tonumber(now) - tonumber(info[2])) * 1000)),
  steps = tonumber(info[3])}
local extensions = {tenant = tenant, flowid = flow, runid = run_id}
if user ~= '' then data.user = user end
redis.call('RPUSH', KEYS[2], cjson.encode({id = 'run-end-' .. run_id,
  type = ARGV[14], source = ARGV[10], data = data,
  extensions = extensions, time = tonumber(now)}))
redis.call('DEL', KEYS[4], KEYS[5])
for i = 1, j do
  redis.call('DEL', KEYS[14 + i])
end
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[8]))
redis.call('EXPIRE', KEYS[6], tonumber(ARGV[8]))
redis.call('ZREM', KEYS[10], run_id)
redis.call('ZADD', KEYS[11], now, run_id)
redis.call('SREM', KEYS[12], run_id)
return 'completed'
