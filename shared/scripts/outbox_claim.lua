#!lua
-- outbox_claim: take up to `limit` events of one outbox for sending, each under a lease.
-- KEYS[1] outbox list (JSON entries, oldest first)
-- KEYS[2] in-flight sorted set (member: entry JSON, score: lease deadline in seconds)
-- ARGV[1] now (seconds)  ARGV[2] lease seconds  ARGV[3] limit
-- Returns: the claimed entries, oldest first: first those whose lease ran out (a flusher
-- that died mid-send), then the head of the outbox. Concurrent flushers never claim the
-- same entry, so an event is sent once unless a flusher dies between send and ack.
local now = tonumber(ARGV[1])
local deadline = now + tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local claimed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit)
for _, entry in ipairs(claimed) do
  redis.call('ZADD', KEYS[2], deadline, entry)
end
while #claimed < limit do
  local entry = redis.call('LPOP', KEYS[1])
  if not entry then
    break
  end
  redis.call('ZADD', KEYS[2], deadline, entry)
  claimed[#claimed + 1] = entry
end
return claimed
