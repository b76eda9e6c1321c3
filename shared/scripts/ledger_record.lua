#!lua
-- ledger_record: add one event's amounts to the ledger rings of its subjects, at most once,
-- together with the watchdog's bookkeeping of the run the event is about.
-- A ring is a hash of SLOTS buckets: field "<slot>" holds the bucket number the slot
-- currently stores, "<slot>.<metric index>" the sums. Writing to a slot that still holds an
-- older bucket clears it first, so a ring never holds more than SLOTS buckets (bounded memory).
--
-- KEYS[1] dedupe key of the event    KEYS[2] outbox of the {pol} tag
-- KEYS[3] watched run hash           KEYS[4] watched runs (sorted set, score = deadline)
-- KEYS[5] active subjects (sorted set, score = last write)
-- KEYS[6..] ledger rings, subject by subject, each subject's windows in ARGV order
-- ARGV[1] dedupe TTL seconds (0: no dedupe; tick accrual is idempotent by its own timestamps)
-- ARGV[2] now (seconds)          ARGV[3] slots per ring     ARGV[4] metric fields per slot
-- ARGV[5] run operation: none | defer | admit | end | accrue | timeout
-- ARGV[6] admit: run fields JSON (runId, flow, tenant, user, token, admitted, limit)
--         end: end time of the run
-- ARGV[7] admit: deadline   end: seconds to count when the run is unknown here
-- ARGV[8] admit / defer: run hash TTL   end / timeout: TTL of the ended run's marker
-- ARGV[9] timeout: outbox entry (JSON) announcing the timeout
--         admit: field index of `runs`, not counted again for a run counted when deferred
-- ARGV[10] field index of run_seconds (the run-time delta is added there)
-- ARGV[11] n, then n pairs (metric field index, amount)
-- then the subject count, and per subject: its active-index member, its ring count w, and w pairs
-- (bucket width seconds, TTL seconds), in the order of its rings in KEYS
-- Returns {status, run seconds added as a string}:
--   status 1 recorded, 0 duplicate event, 2 nothing to count (run unknown or already ended)
local now = tonumber(ARGV[2])
local slots = tonumber(ARGV[3])
local metric_fields = tonumber(ARGV[4])
local op = ARGV[5]

local dedupe_ttl = tonumber(ARGV[1])
if dedupe_ttl > 0 then
  if redis.call('EXISTS', KEYS[1]) == 1 then
    return {0, '0'}
  end
  redis.call('SET', KEYS[1], '1', 'EX', dedupe_ttl)
end

local run_key, index_key = KEYS[3], KEYS[4]
local status = 1
local run_seconds = 0
local uncounted = nil  -- a metric field index not to add (a request counted once)

if op == 'defer' then
  -- a run request that waits: counted now, marked so that its admission is not counted again
  if redis.call('EXISTS', run_key) == 1 then
    status = 2
  else
    redis.call('HSET', run_key, 'deferred', '1')
    redis.call('EXPIRE', run_key, tonumber(ARGV[8]))
  end
elseif op == 'admit' then
  if redis.call('HEXISTS', run_key, 'admitted') == 1 then
    status = 2
  else
    if redis.call('HEXISTS', run_key, 'deferred') == 1 then
      uncounted = ARGV[9]
    end
    local run = cjson.decode(ARGV[6])
    redis.call('HSET', run_key, 'runId', run.runId, 'flow', run.flow, 'tenant', run.tenant,
      'user', run.user, 'token', run.token, 'admitted', run.admitted, 'limit', run.limit,
      'accounted', run.admitted)
    redis.call('EXPIRE', run_key, tonumber(ARGV[8]))
    redis.call('ZADD', index_key, tonumber(ARGV[7]), run.runId)
  end
elseif op == 'end' then
  if redis.call('EXISTS', run_key) == 1 then
    if redis.call('HGET', run_key, 'ended') == '1' then
      status = 2
    else
      local ended_at = tonumber(ARGV[6])
      local accounted = tonumber(redis.call('HGET', run_key, 'accounted'))
      run_seconds = math.max(0, ended_at - accounted)
      redis.call('HSET', run_key, 'ended', '1', 'accounted', math.max(ended_at, accounted))
      redis.call('EXPIRE', run_key, tonumber(ARGV[8]))
      redis.call('ZREM', index_key, redis.call('HGET', run_key, 'runId'))
    end
  else
    run_seconds = tonumber(ARGV[7])
  end
elseif op == 'accrue' or op == 'timeout' then
  if redis.call('EXISTS', run_key) == 0 or redis.call('HGET', run_key, 'ended') == '1' then
    status = 2
  elseif op == 'timeout'
      and redis.call('ZREM', index_key, redis.call('HGET', run_key, 'runId')) == 0 then
    status = 2
  else
    local accounted = tonumber(redis.call('HGET', run_key, 'accounted'))
    run_seconds = math.max(0, now - accounted)
    redis.call('HSET', run_key, 'accounted', math.max(now, accounted))
    if op == 'timeout' then
      redis.call('HSET', run_key, 'ended', '1', 'timedOut', '1')
      redis.call('EXPIRE', run_key, tonumber(ARGV[8]))
      redis.call('RPUSH', KEYS[2], ARGV[9])
    end
  end
end

if status ~= 1 then
  return {status, '0'}
end

-- the amounts: explicit ones plus the run time just accounted
local incs = {}
local n = tonumber(ARGV[11])
local pos = 12
for _ = 1, n do
  local amount = tonumber(ARGV[pos + 1])
  if amount ~= 0 and ARGV[pos] ~= uncounted then
    incs[#incs + 1] = ARGV[pos]
    incs[#incs + 1] = amount
  end
  pos = pos + 2
end
if run_seconds > 0 then
  incs[#incs + 1] = ARGV[10]
  incs[#incs + 1] = run_seconds
end

-- the TTL and the active index are refreshed when a ring enters a new bucket: often enough
-- (a ring outlives its last bucket by one window) and far cheaper than on every write
local k = 6
local subjects = tonumber(ARGV[pos])
pos = pos + 1
for _ = 1, subjects do
  local member, rings = ARGV[pos], tonumber(ARGV[pos + 1])
  pos = pos + 2
  local touched = false
  for _ = 1, rings do
    local key, width, ttl = KEYS[k], tonumber(ARGV[pos]), tonumber(ARGV[pos + 1])
    k = k + 1
    pos = pos + 2
    local bucket = math.floor(now / width)
    local slot = tostring(bucket % slots)
    local held = tonumber(redis.call('HGET', key, slot))
    -- a bucket older than the one the slot holds is out of the ring: dropped
    if #incs > 0 and (held == nil or held <= bucket) then
      if held ~= bucket then
        if held ~= nil then
          local stale = {}
          for m = 0, metric_fields - 1 do
            stale[#stale + 1] = slot .. '.' .. m
          end
          redis.call('HDEL', key, unpack(stale))
        end
        redis.call('HSET', key, slot, bucket)
        redis.call('EXPIRE', key, ttl)
        touched = true
      end
      for m = 1, #incs, 2 do
        redis.call('HINCRBYFLOAT', key, slot .. '.' .. incs[m], incs[m + 1])
      end
    end
  end
  if touched then
    redis.call('ZADD', KEYS[5], now, member)
  end
end

return {1, tostring(run_seconds)}
