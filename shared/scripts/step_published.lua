#!lua
-- step_published: record that claimed messages are in their queues: start their step timeout.
-- A message that ended or was re-scheduled meanwhile (another attempt) is left alone.
-- KEYS[1] due zset  KEYS[2] deadlines zset  KEYS[3] set of step queue names
-- KEYS[4..3+N] the message hashes
-- ARGV[1] now  ARGV[2] Q  ARGV[3..2+Q] the queues published to (remembered for reclaim)
-- then N triples: message id, attempt published, deadline (seconds)
-- Returns: how many messages were recorded.
local q = tonumber(ARGV[2])
for i = 1, q do
  redis.call('SADD', KEYS[3], ARGV[2 + i])
end
local recorded = 0
for i = 1, #KEYS - 3 do
  local b = 3 + q + (i - 1) * 3
  local id, attempt, deadline = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  if redis.call('HGET', KEYS[3 + i], 'attempt') == attempt then
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZADD', KEYS[2], deadline, id)
    redis.call('HSET', KEYS[3 + i], 'published', ARGV[1])
    recorded = recorded + 1
  end
end
return recorded
