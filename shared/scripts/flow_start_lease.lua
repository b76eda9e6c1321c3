#!lua
-- flow_start_lease: a flow's run lease; Lua helpers included by the flow-start scripts.
-- A lease is a string `token|expiresAt|runId`. It is held until expiresAt (now + the run
-- limit, by the caller's clock, so a crashed run's lease expires and the next due time runs);
-- the key's own TTL only collects it later. The token comes from one counter incremented on
-- every acquire, so a stale run can never release or extend a newer run's lease (fencing).
-- lease_holder(key, now) -> token, run_id | nil (free or expired)
-- lease_acquire(key, fence_key, run_id, ttl_s, now, next_token?) -> token | nil (held)
--   next_token: the caller's token source (admission scripts batch the counter), else INCR
-- lease_release(key, token) -> 1 released | 0 (held with another token, or gone)
-- lease_extend(key, token, ttl_s, now) -> 1 | 0
local LEASE_KEEP_SECONDS = 3600  -- an expired lease is kept this long for inspection

local function lease_holder(key, now)
  local value = redis.call('GET', key)
  if not value then
    return nil
  end
  local first = string.find(value, '|', 1, true)
  local second = string.find(value, '|', first + 1, true)
  if tonumber(string.sub(value, first + 1, second - 1)) <= now then
    return nil
  end
  return tonumber(string.sub(value, 1, first - 1)), string.sub(value, second + 1)
end

local function lease_write(key, token, run_id, ttl_s, now)
  redis.call('SET', key, token .. '|' .. (now + ttl_s) .. '|' .. run_id,
    'EX', math.ceil(ttl_s) + LEASE_KEEP_SECONDS)
end

local function lease_acquire(key, fence_key, run_id, ttl_s, now, next_token)
  if lease_holder(key, now) then
    return nil
  end
  local token = next_token and next_token() or redis.call('INCR', fence_key)
  lease_write(key, token, run_id, ttl_s, now)
  return token
end

local function lease_token(key)
  local value = redis.call('GET', key)
  if not value then
    return nil
  end
  return tonumber(string.sub(value, 1, string.find(value, '|', 1, true) - 1))
end

local function lease_release(key, token)
  if lease_token(key) == token then
    redis.call('DEL', key)
    return 1
  end
  return 0
end

local function lease_extend(key, token, run_id, ttl_s, now)
  if lease_token(key) == token then
    lease_write(key, token, run_id, ttl_s, now)
    return 1
  end
  return 0
end
