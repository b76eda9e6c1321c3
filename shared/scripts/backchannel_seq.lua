#!lua
-- backchannel_seq: the seq of one ferryman reply within its delivery of a message, the same
-- each time that reply is read (a backchannel that died before acknowledging reads it again).
-- KEYS[1] the delivery's outputs hash (keys.backchannel_outputs)
-- ARGV[1] the reply's identity (its emission time and a digest of its body)
-- ARGV[2] kind: output | error | end  ARGV[3] ttl seconds of the hash
-- Returns {seq, state}: state 'new' | 'again' (counted before: send the same event again)
--         | 'errored' (an end after an error: the failure already ended the message)
local seen = redis.call('HGET', KEYS[1], 'r:' .. ARGV[1])
if seen then
  return {tonumber(seen), 'again'}
end
local n = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
local state = 'new'
if ARGV[2] == 'output' then
  redis.call('HSET', KEYS[1], 'n', n + 1)
elseif ARGV[2] == 'error' then
  redis.call('HSET', KEYS[1], 'error', '1')
elseif redis.call('HEXISTS', KEYS[1], 'error') == 1 then
  state = 'errored'
end
redis.call('HSET', KEYS[1], 'r:' .. ARGV[1], n)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return {n, state}
