#!lua
-- flow_start_due: read (not claim) the earliest due schedule entries with their settings;
-- flow_start_fire claims each one by its score (compare-and-set), so reading twice is harmless.
-- KEYS[1] due sorted set   KEYS[2] the schedule key family (keys.schedule_family())
-- ARGV[1] now (epoch s)   ARGV[2] most entries
-- Returns: flat list, 3 per entry: flow, due, and the settings joined by \31 (unit separator):
--          cron, zone, offset, tenant, user, overlap, catch-up, max run ('' where unset)
--          (one reply item instead of eight: the client parses a thousand entries per tick)
--#include keys_common
local entries = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES',
  'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for i = 1, #entries, 2 do
  local flow = entries[i]
  local v = redis.call('HMGET', family_key(KEYS[2], flow), 'c', 'z', 'o', 't', 'u', 'p', 'w', 'm')
  for j = 1, 8 do
    v[j] = v[j] or ''
  end
  out[#out + 1] = flow
  out[#out + 1] = entries[i + 1]
  out[#out + 1] = table.concat(v, '\31')
end
return out
