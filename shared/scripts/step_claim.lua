#!lua
-- step_claim: take due step messages for publishing, within the message-rate token buckets
-- of their tenant and flow; a message over the rate is re-scheduled (never dropped) to when
-- its buckets will have a token, later messages of the same bucket spaced one token apart.
-- A claimed message is re-scored to now + lease, so a publisher that dies leaves it due again.
-- KEYS[1] due zset  KEYS[2..1+B] token bucket hashes
-- ARGV[1] now  ARGV[2] claim lease seconds  ARGV[3] B
-- ARGV[4..3+2B] per bucket: rate (tokens/s), burst (max tokens)
-- then per message: message id, tenant bucket index (1..B), flow bucket index (1..B)
-- Returns: the ids of the claimed messages, in order.
local now, lease, b = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local rate, burst, tokens, deficit = {}, {}, {}, {}
for i = 1, b do
  rate[i] = tonumber(ARGV[2 + 2 * i])
  burst[i] = tonumber(ARGV[3 + 2 * i])
  local state = redis.call('HMGET', KEYS[1 + i], 'tokens', 'at')
  local level, at = tonumber(state[1]), tonumber(state[2])
  if level == nil or at == nil then
    level = burst[i]
  else
    level = math.min(burst[i], level + math.max(0, now - at) * rate[i])
  end
  tokens[i] = level
  deficit[i] = 0
end
local claimed = {}
local first = 4 + 2 * b
for p = first, #ARGV, 3 do
  local id, t, f = ARGV[p], tonumber(ARGV[p + 1]), tonumber(ARGV[p + 2])
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) <= now then
    if tokens[t] >= 1 and tokens[f] >= 1 then
      tokens[t] = tokens[t] - 1
      if f ~= t then tokens[f] = tokens[f] - 1 end
      redis.call('ZADD', KEYS[1], now + lease, id)
      table.insert(claimed, id)
    else
      local wait = 0
      for _, i in ipairs({t, f}) do
        if tokens[i] < 1 then
          wait = math.max(wait, (deficit[i] + 1 - tokens[i]) / rate[i])
          deficit[i] = deficit[i] + 1
        end
      end
      redis.call('ZADD', KEYS[1], now + wait, id)
    end
  end
end
for i = 1, b do
  redis.call('HSET', KEYS[1 + i], 'tokens', tokens[i], 'at', now)
  redis.call('EXPIRE', KEYS[1 + i], 3600)
end
return claimed
