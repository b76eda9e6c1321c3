#!lua
-- step_usage_flush: turn the message and byte counts not yet reported into usage.reported
-- events (one per tenant, user and flow) in the outbox, and reset the counts.
-- KEYS[1] usage messages hash  KEYS[2] usage bytes hash  KEYS[3] outbox
-- ARGV[1] now  ARGV[2] event source  ARGV[3] event id prefix  ARGV[4] event type (usage.reported)
-- Returns: how many events were staged.
local entries = redis.call('HGETALL', KEYS[1])
local staged = 0
for i = 1, #entries, 2 do
  local subject = cjson.decode(entries[i])
  local bytes = tonumber(redis.call('HGET', KEYS[2], entries[i]) or '0')
  local data = {tenant = subject[1], user = subject[2], flowId = subject[3],
    messages = tonumber(entries[i + 1]), bytes = bytes}
  staged = staged + 1
  redis.call('RPUSH', KEYS[3], cjson.encode({id = ARGV[3] .. staged,
    type = ARGV[4], source = ARGV[2], data = data,
    extensions = {tenant = subject[1], flowid = subject[3]}, time = tonumber(ARGV[1])}))
end
redis.call('DEL', KEYS[1], KEYS[2])
return staged
