#!lua
-- flow_tombstone: mark a flow stopped, unless a newer flow.starting is already stored. The
-- tombstone expires (FLOW_TOMBSTONE_TTL_SECONDS): made-up ids do not stay in Redis forever.
-- KEYS[1] flow document hash   KEYS[2] set of wanted flow ids
-- KEYS[3] the tenants' flow sets (family: co:{flows}:tenant-flows:)
-- ARGV[1] flow id  ARGV[2] version (seconds) of the stop
-- ARGV[3] the latest version a stop of a flow never seen may carry ('' = no bound): anyone
--         may stop an unknown id, and a far-future time would make its every later start stale
-- ARGV[4] seconds the tombstone is kept ('' or '0' = for ever)
-- Returns: 'stale' (a newer start is stored), 'unknown' (never seen: tombstone kept anyway),
--          'stopped'.
--#include keys_common
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '-1')
local version = tonumber(ARGV[2])
if version < current and redis.call('HGET', KEYS[1], 'stopped') == '0' then
  return 'stale'
end
local known = redis.call('EXISTS', KEYS[1])
if known == 0 and ARGV[3] ~= '' then
  version = math.min(version, tonumber(ARGV[3]))
end
redis.call('HSET', KEYS[1], 'stopped', '1', 'version', tostring(math.max(version, current)))
local ttl = tonumber(ARGV[4] or '') or 0
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], math.ceil(ttl))
end
redis.call('SREM', KEYS[2], ARGV[1])
local tenant = redis.call('HGET', KEYS[1], 'tenant')
if tenant then
  redis.call('SREM', family_key(KEYS[3], tenant), ARGV[1])
end
if known == 0 then
  return 'unknown'
end
return 'stopped'
