#!lua
-- flow_upsert: store a flow document unless a newer version (or a newer tombstone) is there,
-- and unless it would be one flow too many for its tenant.
-- KEYS[1] flow document hash   KEYS[2] set of wanted flow ids
-- KEYS[3] the tenants' flow sets (family: co:{flows}:tenant-flows:)
-- ARGV[1] flow id  ARGV[2] document JSON  ARGV[3] content hash  ARGV[4] version (seconds)
-- ARGV[5] tenant   ARGV[6] the tenant's max_flows ('' = unbounded)
-- ARGV[7] the document's form (shared/model/flows.py FORM: how its edges are read)
-- Returns: 'stale' (older than what is stored), 'same' (identical content), 'stored',
--          'over' (the tenant already has max_flows other wanted flows: nothing stored).
--#include keys_common
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '-1')
local version = tonumber(ARGV[4])
if version < current then
  return 'stale'
end
local stopped = redis.call('HGET', KEYS[1], 'stopped')
if stopped == '1' and version <= current then
  return 'stale'
end
local tenant_flows = family_key(KEYS[3], ARGV[5])
if ARGV[6] ~= '' and redis.call('SISMEMBER', tenant_flows, ARGV[1]) == 0
    and redis.call('SCARD', tenant_flows) >= tonumber(ARGV[6]) then
  return 'over'
end
if stopped ~= '1' and redis.call('HGET', KEYS[1], 'hash') == ARGV[3] then
  -- Same content, but remember the newer version: else an older, different document (or an
  -- older stop) delivered late would win against this newer one.
  redis.call('HSET', KEYS[1], 'version', ARGV[4], 'form', ARGV[7])
  redis.call('SADD', tenant_flows, ARGV[1])
  return 'same'
end
local previous = redis.call('HGET', KEYS[1], 'tenant')
if previous and previous ~= ARGV[5] then
  redis.call('SREM', family_key(KEYS[3], previous), ARGV[1])
end
redis.call('HSET', KEYS[1], 'doc', ARGV[2], 'hash', ARGV[3], 'version', ARGV[4],
  'tenant', ARGV[5], 'stopped', '0', 'form', ARGV[7])
redis.call('PERSIST', KEYS[1])  -- a tombstone expires; a wanted flow does not
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SADD', tenant_flows, ARGV[1])
return 'stored'
