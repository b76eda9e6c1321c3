#!lua
-- flow_start_due: read (not claim) the earliest due schedule entries with their settings;
-- flow_start_fire claims each one by its score (compare-and-set), so reading twice is harmless.
-- A schedule found in the previous release's form is moved to the schedules hash (with its
-- buffered due time) as it is read: the same schedule, so this too is harmless twice.
-- KEYS[1] due sorted set   KEYS[2] the schedules hash (keys.schedules())
-- KEYS[3] the previous release's schedule key family (keys.schedule_family()), read for one
--         release where a flow has no entry in KEYS[2] yet
-- KEYS[4] the buffered due times hash (keys.schedule_buffered())
-- ARGV[1] now (epoch s)   ARGV[2] most entries
-- Returns: flat list, 3 per entry: flow, due, and the packed schedule as keys.schedules()
--          holds it ('' without a schedule): one HMGET for every entry, one reply item each
--#include keys_common
--#include schedule_format
local entries = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES',
  'LIMIT', 0, tonumber(ARGV[2]))
local flows = {}
for i = 1, #entries, 2 do
  flows[#flows + 1] = entries[i]
end
local packed = {}
for first = 1, #flows, 1000 do
  local last = math.min(first + 999, #flows)
  local chunk = redis.call('HMGET', KEYS[2], unpack(flows, first, last))
  for j = 1, last - first + 1 do
    packed[first + j - 1] = chunk[j]
  end
end
local out = {}
for n, flow in ipairs(flows) do
  local schedule = packed[n]
  if not schedule then  -- the previous release's hash per flow: moved
    local old = family_key(KEYS[3], flow)
    local v = redis.call('HMGET', old, 'c', 'z', 'o', 't', 'u', 'p', 'w', 'm', 'b')
    for j = 1, 8 do
      v[j] = v[j] or ''
    end
    schedule = ''
    if v[1] ~= '' then
      schedule = schedule_pack(v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8])
      redis.call('HSET', KEYS[2], flow, schedule)
      if v[9] then
        redis.call('HSET', KEYS[4], flow, v[9])
      end
      redis.call('DEL', old)
    end
  end
  out[#out + 1] = flow
  out[#out + 1] = entries[2 * n]
  out[#out + 1] = schedule
end
return out
