#!lua
-- flow_upsert: store a flow document unless a newer version (or a newer tombstone) is there.
-- KEYS[1] flow document hash   KEYS[2] set of wanted flow ids
-- ARGV[1] flow id  ARGV[2] document JSON  ARGV[3] content hash  ARGV[4] version (seconds)
-- ARGV[5] tenant
-- Returns: 'stale' (older than what is stored), 'same' (identical content), 'stored'.
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '-1')
local version = tonumber(ARGV[4])
if version < current then
  return 'stale'
end
local stopped = redis.call('HGET', KEYS[1], 'stopped')
if stopped == '1' and version <= current then
  return 'stale'
end
if stopped ~= '1' and redis.call('HGET', KEYS[1], 'hash') == ARGV[3] then
  -- Same content, but remember the newer version: else an older, different document (or an
  -- older stop) delivered late would win against this newer one.
  redis.call('HSET', KEYS[1], 'version', ARGV[4])
  return 'same'
end
redis.call('HSET', KEYS[1], 'doc', ARGV[2], 'hash', ARGV[3], 'version', ARGV[4],
  'tenant', ARGV[5], 'stopped', '0')
redis.call('SADD', KEYS[2], ARGV[1])
return 'stored'
