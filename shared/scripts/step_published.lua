-- step_published: record that claimed messages are in their queues: start their step timeout.
-- A message that ended or was re-scheduled meanwhile (another attempt) is left alone.
-- KEYS[1] due zset  KEYS[2] deadlines zset  KEYS[3..2+N] the message hashes
-- ARGV[1] now  then N triples: message id, attempt published, deadline (seconds)
-- Returns: how many messages were recorded.
local recorded = 0
for i = 1, #KEYS - 2 do
  local b = 2 + (i - 1) * 3
  local id, attempt, deadline = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  if redis.call('HGET', KEYS[2 + i], 'attempt') == attempt then
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZADD', KEYS[2], deadline, id)
    redis.call('HSET', KEYS[2 + i], 'published', ARGV[1])
    recorded = recorded + 1
  end
end
return recorded
