#!lua
-- flow_start_queue: admission and weighted fair dispatch (included after flow_start_common
-- and flow_start_lease).
-- A run is admitted when a global slot is free, its tenant is under its concurrent-run cap,
-- its tenant's start-rate bucket holds a token and no penalty suspends its tenant, user or
-- flow; otherwise it waits. Waiting runs are dispatched by hierarchical start-time fair
-- queuing: tenants (weight = policy weight x penalty factor), then the tenant's users, then
-- the user's flows (weight = penalty factor), then oldest first. A child that becomes
-- backlogged starts at max(the level's virtual time, its own finish tag), so an idle or
-- blocked child banks no credit; serving a child moves its tag on by cost / weight. The
-- cost (docs/architecture.md, fair admission) is 1 per run in mode count; by usage it is the
-- run's slot-seconds (x the tenant's dominant-share factor): the flow's recent mean is
-- charged at admission, the time a run holds its slot beyond that as it runs (at ticks:
-- flow_start_charge), and the difference to the actual when the run ends. A departed
-- child's lead over the virtual time halves every half-life. A backlogged tenant that has
-- gone without a start for longer than the aging bound is served before fair order (the one
-- waiting longest first) if it holds no slot, and so is a backlogged flow that holds none.
-- Run records (JSON): id, f flow, t tenant, u user, c trigger, s scheduledFor, k fencing
-- token, l run limit (s), q 1 when it holds the flow's lease, m msg (raw JSON text),
-- a admitted at, e cost charged at admission (both absent in records of older releases).

local ADMITTED = {}
local admitted_count = 0

local FAIR = LIMITS['*']
local BY_USAGE = FAIR[6] == 1
local HALF_LIFE = FAIR[7] or 600
local MAX_WAIT = FAIR[8]  -- nil (callers of an older release): no aging
local DEFAULT_COST = FAIR[9] or 30
local MIN_COST = 0.001  -- a run of no measurable length still moves its tag on
local AGED_LOOK = 20  -- aged tenants inspected per pick (bounds the script's running time)

-- start-rate token bucket (capacity: one minute's worth, at least one start); read once per
-- tenant and call, written back by admit()
local buckets = {}
local function bucket_tokens(tenant)
  local rate_factor = penalty('tenant', tenant)
  local per_minute = limits(tenant).rate * rate_factor
  local capacity = math.max(1, per_minute)
  local bucket = buckets[tenant]
  if not bucket then
    local raw = redis.call('HGET', K.bucket, tenant)
    if raw then
      local sep = string.find(raw, ':', 1, true)
      bucket = { tonumber(string.sub(raw, 1, sep - 1)), tonumber(string.sub(raw, sep + 1)) }
    else
      bucket = { capacity, NOW }
    end
    buckets[tenant] = bucket
  end
  return math.min(capacity, bucket[1] + math.max(0, NOW - bucket[2]) * per_minute / 60)
end

local function bucket_take(tenant)
  local tokens = bucket_tokens(tenant) - 1
  local bucket = buckets[tenant]  -- bucket_tokens read it; changed in place (no table per run)
  bucket[1], bucket[2] = tokens, NOW
  BUCKET_WRITES[tenant] = bucket  -- written as `tokens:at` by flush(), once per tenant
end

-- why the tenant cannot start a run now, or nil
local function tenant_block(tenant)
  if suspended('tenant', tenant) then
    return 'suspended'
  end
  local l = limits(tenant)
  if counter(l.running_field) >= l.cap then
    return 'tenant_cap'
  end
  if bucket_tokens(tenant) < 1 then
    return 'start_rate'
  end
  return nil
end

local function run_block(run)
  if counter('*') >= SLOTS then
    return 'slots'
  end
  if suspended('user', run.u, run.t) or suspended('flow', run.f, run.t) then
    return 'suspended'
  end
  return tenant_block(run.t)
end

local FRESH_LEASE = {}  -- runs whose lease this call acquired (nothing to extend)

local function admit(run)
  run.a = NOW
  bucket_take(run.t)
  count_add('*', 1)
  count_add(limits(run.t).running_field, 1)
  count_add(flow_field(run.f), 1)
  local msg = run.m or '{}'
  run.m = nil
  local record = cjson.encode(run)
  RUNS[#RUNS + 1] = run.id
  RUNS[#RUNS + 1] = record
  DEADLINES[#DEADLINES + 1] = NOW + run.l + RUN_GRACE_SECONDS
  DEADLINES[#DEADLINES + 1] = run.id
  if BY_USAGE then  -- charged up to: what its estimate covers (flow_start_charge)
    CHARGED[#CHARGED + 1] = NOW + (run.e or 0) / limits(run.t).factor
    CHARGED[#CHARGED + 1] = run.id
  end
  if run.q == 1 and not FRESH_LEASE[run.id] then
    -- the lease was taken when the run started waiting; it runs from now on (dispatch has
    -- skipped it if a newer run took the lease over; a lease gone altogether is written back)
    local key = lease_key(run.f)
    if lease_token(key) == nil then
      lease_write(key, run.k, run.id, run.l, NOW)
    else
      lease_extend(key, run.k, run.id, run.l, NOW)
    end
  end
  emit_admitted(run, record, msg)
  ADMITTED[run.id] = true
  admitted_count = admitted_count + 1
end

-- fair queuing levels ------------------------------------------------------------------------
local function virtual_time(field)
  return tonumber(redis.call('HGET', K.clock, field) or '0')
end

-- an idle child's stored finish tag `finish@left` (the previous release stored `finish`: read
-- as left now) as a start tag: its lead over the virtual time fades with the half-life
local function idle_tag(raw, vt)
  local at = string.find(raw, '@', 1, true)
  local finish = tonumber(at and string.sub(raw, 1, at - 1) or raw)
  if finish <= vt then
    return vt
  end
  if not BY_USAGE or not at then
    return finish
  end
  local idle = math.max(0, NOW - tonumber(string.sub(raw, at + 1)))
  return vt + (finish - vt) * 2 ^ (-idle / HALF_LIFE)
end

local function keep_finish(vt, ffield, finish)
  if finish > vt then
    redis.call('HSET', K.clock, ffield, number(finish) .. '@' .. ARGV[2])
  else
    redis.call('HDEL', K.clock, ffield)
  end
end

-- the aging entry of a backlogged child: since when it waits without a start (nil: it left);
-- tenants in K.age, the flows of a tenant's user in K.flow_age as pair(pair(tenant, user),
-- flow); users have none
local function mark_waiting(set, member, since)
  local age, aged
  if set == K.tenants then
    age, aged = K.age, member
  elseif string.sub(set, 1, #K.flows) == K.flows then
    age, aged = K.flow_age, pair(string.sub(set, #K.flows + 1), member)
  else
    return
  end
  if since then
    redis.call('ZADD', age, since, aged)
  else
    redis.call('ZREM', age, aged)
  end
end

local function join(set, vfield, ffield, member)
  if redis.call('ZSCORE', set, member) then
    return
  end
  local tag = virtual_time(vfield)
  local finish = redis.call('HGET', K.clock, ffield)
  if finish then
    redis.call('HDEL', K.clock, ffield)
    tag = idle_tag(finish, tag)
  end
  redis.call('ZADD', set, tag, member)
  mark_waiting(set, member, NOW)  -- backlogged from now on, not started yet
end

local function leave_with(set, vfield, ffield, member, finish)
  redis.call('ZREM', set, member)
  mark_waiting(set, member, nil)
  local vt = virtual_time(vfield)
  if finish > vt then
    keep_finish(vt, ffield, finish)
  end
end

local function leave(set, vfield, ffield, member)
  local tag = redis.call('ZSCORE', set, member)
  if tag then
    leave_with(set, vfield, ffield, member, tonumber(tag))
  end
end

-- (an aged pick, served before fair order, leaves the virtual time where it is: moved to a
-- heavy child's tag it would wipe out the others' lead on it)
local function served(set, vfield, ffield, member, tag, weight, still_waiting, cost, aged)
  local start = math.max(tag, virtual_time(vfield))
  if not aged then
    redis.call('HSET', K.clock, vfield, start)
  end
  local finish = start + cost / math.max(weight, 1e-6)
  if still_waiting then
    redis.call('ZADD', set, finish, member)
    mark_waiting(set, member, NOW)
  else
    leave_with(set, vfield, ffield, member, finish)
  end
end

local function levels(flow, tenant, user)
  local tu = pair(tenant, user)
  return {
    { flows_key(tenant, user), 'F:' .. tu, 'f:' .. pair(flow, user), flow },
    { users_key(tenant), 'U:' .. tenant, 'u:' .. tu, user },
    { K.tenants, 'T', 't:' .. tenant, tenant },
  }
end

-- the weights of the levels() entries: flow and user by penalty, tenant by policy x penalty
local function level_weights(flow, tenant, user)
  local _, flow_weight = penalty('flow', flow, tenant)
  local _, user_weight = penalty('user', user, tenant)
  local _, tenant_factor = penalty('tenant', tenant)
  return { flow_weight, user_weight, limits(tenant).weight * tenant_factor }
end

-- what serving the run is charged now: 1 in mode count, else the flow's recent mean run
-- length (before its first run ends: all flows' recent mean, or the policy's default), at
-- most the run limit, in slot-seconds x
-- the tenant's dominant-share factor
local function estimate(run)
  if not BY_USAGE then
    return 1
  end
  local mean = tonumber(redis.call('HGET', K.cost, run.f) or '')
    or tonumber(redis.call('HGET', K.cost, '*') or '') or DEFAULT_COST
  return math.max(MIN_COST, math.min(mean, run.l)) * limits(run.t).factor
end

-- moves the run's tenant, user and flow on by `delta` slot-seconds (x factor) at their levels:
-- a backlogged child's tag, an idle one's finish tag; never below the level's virtual time,
-- so an over-estimate leaves no credit
local function charge(run, delta)
  local weights = level_weights(run.f, run.t, run.u)
  for i, level in ipairs(levels(run.f, run.t, run.u)) do
    local set, vfield, ffield, member = level[1], level[2], level[3], level[4]
    local vt = virtual_time(vfield)
    local moved = delta / math.max(weights[i], 1e-6)
    local tag = redis.call('ZSCORE', set, member)
    if tag then
      redis.call('ZADD', set, math.max(vt, tonumber(tag) + moved), member)
    else
      local raw = redis.call('HGET', K.clock, ffield)
      keep_finish(vt, ffield, (raw and idle_tag(raw, vt) or vt) + moved)
    end
  end
end

-- what the run has been charged so far: up to its charged-through time (flow_start_charge),
-- or, for a run admitted by an older release, its estimate
local function charged(run)
  local through = redis.call('ZSCORE', K.charged, run.id)
  if not through then
    return run.e or 0
  end
  redis.call('ZREM', K.charged, run.id)
  return math.max(0, math.min(tonumber(through), run.a + run.l) - run.a) * limits(run.t).factor
end

-- a run ended: its actual cost (slot-seconds held, at most its limit) replaces what was charged
-- for it (charge()), and becomes part of the flow's mean
local function settle(run)
  if not BY_USAGE or not run.a then
    redis.call('ZREM', K.charged, run.id)  -- the mode changed while it ran
    return  -- admitted by an older release or in mode count: charged per run
  end
  local seconds = math.max(MIN_COST, math.min(NOW - run.a, run.l))
  for _, field in ipairs({ run.f, '*' }) do  -- the flow's mean, and all flows' for new ones
    local mean = tonumber(redis.call('HGET', K.cost, field) or '')
    redis.call('HSET', K.cost, field, number(mean and (mean + seconds) / 2 or seconds))
  end
  local delta = seconds * limits(run.t).factor - charged(run)
  if delta ~= 0 then
    charge(run, delta)
  end
end

-- the flow's queue of this user has runs and the flow is deployed: make it dispatchable
local function activate(flow, tenant, user)
  for _, level in ipairs(levels(flow, tenant, user)) do
    join(level[1], level[2], level[3], level[4])
  end
end

-- the queue emptied or the flow is parked (not deployed): take it out of the rotation
local function deactivate(flow, tenant, user)
  for _, level in ipairs(levels(flow, tenant, user)) do
    leave(level[1], level[2], level[3], level[4])
    if redis.call('EXISTS', level[1]) == 1 then
      return  -- the parent still has other dispatchable children
    end
  end
end

-- whether dispatchable runs wait (read once, forgotten when queues change)
local backlog = nil
local function backlogged()
  if backlog == nil then
    backlog = redis.call('EXISTS', K.tenants) == 1
  end
  return backlog
end

local function enqueue(run, deployed)
  redis.call('HSET', K.waiting, run.id, cjson.encode(run))
  redis.call('RPUSH', queue_key(run.f, run.u), run.id)
  redis.call('SADD', queue_users_key(run.f), run.u)
  count_add(limits(run.t).waiting_field, 1)
  if deployed then
    activate(run.f, run.t, run.u)
    backlog = nil
  end
end

local function first_unsuspended(set, level, tenant)
  local list = redis.call('ZRANGE', set, 0, -1, 'WITHSCORES')
  for i = 1, #list, 2 do
    if not suspended(level, list[i], tenant) then
      return list[i], tonumber(list[i + 1])
    end
  end
  return nil
end

local function pick_user(tenant)
  local list = redis.call('ZRANGE', users_key(tenant), 0, -1, 'WITHSCORES')
  for i = 1, #list, 2 do
    local user = list[i]
    if not suspended('user', user, tenant) then
      local flow, flow_tag = first_unsuspended(flows_key(tenant, user), 'flow', tenant)
      if flow then
        return user, tonumber(list[i + 1]), flow, flow_tag
      end
    end
  end
  return nil
end

-- the oldest waiting run of the flow's queue for this user, taken out of the waiting state
local function pop_run(flow, tenant, user)
  local queue = queue_key(flow, user)
  local run_id = redis.call('LPOP', queue)
  local raw = run_id and redis.call('HGET', K.waiting, run_id)
  if not raw then
    return nil
  end
  redis.call('HDEL', K.waiting, run_id)
  count_add(limits(tenant).waiting_field, -1)
  if redis.call('EXISTS', queue) == 0 then
    redis.call('SREM', queue_users_key(flow), user)
  end
  return cjson.decode(raw)
end

local function unpair(text)
  local colon = string.find(text, ':', 1, true)
  local first_end = colon + tonumber(string.sub(text, 1, colon - 1))
  return string.sub(text, colon + 1, first_end), string.sub(text, first_end + 2)
end

-- past the aging bound, the one waiting longest first, and able to start now: a backlogged
-- tenant that holds no slot, with its user and flow in fair order; else a backlogged flow
-- that holds no slot, whatever its tenant holds (a light flow of a heavy tenant). A tenant
-- or flow whose own runs hold slots waits its turn in fair order: the bound is a guard
-- against starvation, not a way around a share. Returns tenant, its tag, user, its tag,
-- flow, its tag; or nil
local function aged_tenant(blocked)
  local old = redis.call('ZRANGEBYSCORE', K.age, '-inf', NOW - MAX_WAIT, 'WITHSCORES',
    'LIMIT', 0, AGED_LOOK)
  for i = 1, #old, 2 do
    local tenant = old[i]
    if not blocked[tenant] and counter(limits(tenant).running_field) == 0
        and not tenant_block(tenant) then
      local user, user_tag, flow, flow_tag = pick_user(tenant)
      local tag = user and redis.call('ZSCORE', K.tenants, tenant)
      if tag then
        return tonumber(old[i + 1]), { tenant, tonumber(tag), user, user_tag, flow, flow_tag }
      end
    end
  end
  return nil
end

local function aged_flow(blocked)
  local old = redis.call('ZRANGEBYSCORE', K.flow_age, '-inf', NOW - MAX_WAIT, 'WITHSCORES',
    'LIMIT', 0, AGED_LOOK)
  for i = 1, #old, 2 do
    local tenant_user, flow = unpair(old[i])
    local tenant, user = unpair(tenant_user)
    if not blocked[tenant] and counter(flow_field(flow)) == 0 and not suspended('user', user, tenant)
        and not suspended('flow', flow, tenant) and not tenant_block(tenant) then
      local flow_tag = redis.call('ZSCORE', flows_key(tenant, user), flow)
      local user_tag = flow_tag and redis.call('ZSCORE', users_key(tenant), user)
      local tag = user_tag and redis.call('ZSCORE', K.tenants, tenant)
      if tag then
        return tonumber(old[i + 1]),
          { tenant, tonumber(tag), user, tonumber(user_tag), flow, tonumber(flow_tag) }
      end
      redis.call('ZREM', K.flow_age, old[i])  -- out of the rotation (never expected)
    end
  end
  return nil
end

local function aged_pick(blocked)
  local tenant_since, by_tenant = aged_tenant(blocked)
  local flow_since, by_flow = aged_flow(blocked)
  local pick = by_tenant
  if by_flow and (not by_tenant or flow_since < tenant_since) then
    pick = by_flow
  end
  if pick then
    return unpack(pick)
  end
  return nil
end

-- admit waiting runs in fair order while slots are free
local function dispatch()
  backlog = nil
  local blocked = {}
  while admitted_count < BUDGET and counter('*') < SLOTS do
    local tenant, tenant_tag, user, user_tag, flow, flow_tag
    if MAX_WAIT then
      tenant, tenant_tag, user, user_tag, flow, flow_tag = aged_pick(blocked)
    end
    local aged = tenant ~= nil
    local tenants = tenant and {} or redis.call('ZRANGE', K.tenants, 0, -1, 'WITHSCORES')
    for i = 1, #tenants, 2 do
      local candidate = tenants[i]
      if not blocked[candidate] then
        if tenant_block(candidate) then
          blocked[candidate] = true
        else
          user, user_tag, flow, flow_tag = pick_user(candidate)
          if user then
            tenant, tenant_tag = candidate, tonumber(tenants[i + 1])
            break
          end
          blocked[candidate] = true
        end
      end
    end
    if not tenant then
      return
    end
    local run = pop_run(flow, tenant, user)
    local holder = run and run.q == 1 and lease_token(lease_key(flow))
    if holder and holder ~= run.k then
      -- a waiting cron run whose lease expired and was taken by a newer due time of the
      -- flow: that one runs, this one never does (overlap protection); costs no share
      not_started('skipped', run, 'superseded')
      if redis.call('EXISTS', queue_key(flow, user)) == 0 then
        deactivate(flow, tenant, user)
      end
    elseif run then
      local more = redis.call('EXISTS', queue_key(flow, user)) == 1
      local lv = levels(flow, tenant, user)
      local w = level_weights(flow, tenant, user)
      local cost = estimate(run)
      served(lv[1][1], lv[1][2], lv[1][3], flow, flow_tag, w[1], more, cost, aged)
      served(lv[2][1], lv[2][2], lv[2][3], user, user_tag, w[2],
        redis.call('EXISTS', lv[1][1]) == 1, cost, aged)
      served(lv[3][1], lv[3][2], lv[3][3], tenant, tenant_tag, w[3],
        redis.call('EXISTS', lv[2][1]) == 1, cost, aged)
      if BY_USAGE then
        run.e = cost
      end
      admit(run)
    else  -- never expected: heal the rotation instead of failing every dispatch
      deactivate(flow, tenant, user)
    end
  end
end

local function wait_reason(run, deployed)
  if not deployed then
    return 'not_deployed'
  end
  return run_block(run) or 'fair_share'
end

local function waiting_full(tenant)
  return counter(limits(tenant).waiting_field) >= limits(tenant).max_waiting
end

-- a new run: admitted at once when nothing dispatchable waits and nothing blocks it, else it
-- joins its queue and the fair dispatch decides. Returns 'admitted' or 'deferred'.
local function submit(run, deployed)
  if deployed and not backlogged() and not run_block(run) then
    admit(run)
    return 'admitted'
  end
  enqueue(run, deployed)
  if deployed then
    dispatch()
  end
  if ADMITTED[run.id] then
    return 'admitted'
  end
  not_started('deferred', run, wait_reason(run, deployed))
  return 'deferred'
end

-- a cron run's msg is '{}', except for a run of the hub's scheduler (flow_start_hub_fire
-- passes its flow.execute's msg)
local due_value, due_text = nil, nil  -- the last due time formatted (a tick's runs share it)
local function cron_run(flow, due, limit, tenant, user, msg)
  if due ~= due_value then
    due_value, due_text = due, string.format('%d', due)
  end
  -- k (the fencing token) is set before the run is admitted or waits; named here so that the
  -- table is built with room for every field a run gets (no rehash per run)
  return { id = flow .. '@' .. due_text, f = flow, t = tenant, u = user,
    c = 'cron', s = due, l = limit, m = msg or '{}', k = 0 }
end

-- one cron due time. Returns admitted | deferred | buffered | skipped
local function fire_cron(flow, due, limit, overlap, tenant, user, msg)
  local run = cron_run(flow, due, limit, tenant, user, msg)  -- the caller claimed this due time
  local deployed = DEPLOYED[flow]  -- a tick reads it for all its entries at once
  if deployed == nil then
    deployed = redis.call('SISMEMBER', K.deployed, flow) == 1
  end
  if not deployed then
    not_started('skipped', run, 'not_deployed')
    return 'skipped'
  end
  if waiting_full(tenant) then
    not_started('skipped', run, 'queue_full')
    return 'skipped'
  end
  if overlap == 'allow' then
    run.k = next_token()
  else
    local token = lease_acquire(lease_key(flow), K.fence, run.id, limit, NOW, next_token)
    if not token then
      if overlap == 'buffer_one' and not buffered_of(flow) then
        -- `due|limit`, and `|msg` for a run of the hub's scheduler (its msg goes on with it)
        local kept = string.format('%d', due) .. '|' .. limit
        if msg then
          kept = kept .. '|' .. msg
        end
        redis.call('HSET', K.buffered, flow, kept)
        not_started('deferred', run, 'buffered')
        return 'buffered'
      end
      not_started('skipped', run, 'overlap')
      return 'skipped'
    end
    run.k, run.q = token, 1
    FRESH_LEASE[run.id] = true
    local buffered = buffered_of(flow)
    if buffered then  -- its predecessor's lease expired: this run supersedes it
      buffered_forget(flow)
      local old_due = tonumber(string.sub(buffered, 1, string.find(buffered, '|', 1, true) - 1))
      not_started('skipped', cron_run(flow, old_due, limit, tenant, user), 'superseded')
    end
  end
  return submit(run, true)
end

-- a buffered due time (overlap buffer_one) starts once the lease is free
local function start_buffered(flow)
  local buffered = buffered_of(flow)
  if not buffered then
    return
  end
  buffered_forget(flow)
  local packed = schedule_of(flow)
  local tenant, user = '', ''
  if packed then
    local _
    _, _, _, tenant, user = schedule_unpack(packed)
  end
  -- `due|limit` (a tick's, and every one the previous release kept) or `due|limit|msg`
  local sep = string.find(buffered, '|', 1, true)
  local msg_sep = string.find(buffered, '|', sep + 1, true)
  local limit_text = string.sub(buffered, sep + 1, (msg_sep or 0) - 1)
  local msg = msg_sep and string.sub(buffered, msg_sep + 1) or nil
  fire_cron(flow, tonumber(string.sub(buffered, 1, sep - 1)), tonumber(limit_text),
    'buffer_one', tenant, user, msg)
end

-- a run ended (or its deadline passed): free its slot and lease, start a buffered run
local function end_run(run_id, run)
  settle(run)
  redis.call('HDEL', K.runs, run_id)
  redis.call('ZREM', K.deadlines, run_id)
  count_add('*', -1)
  count_add(limits(run.t).running_field, -1)
  count_add(flow_field(run.f), -1)
  if run.q == 1 and lease_release(lease_key(run.f), run.k) == 1 then
    start_buffered(run.f)
  end
end

-- runs whose deadline passed without an end event give their slots back
local function reap(limit)
  local expired = redis.call('ZRANGEBYSCORE', K.deadlines, '-inf', NOW, 'LIMIT', 0, limit)
  for _, run_id in ipairs(expired) do
    local raw = redis.call('HGET', K.runs, run_id)
    if raw then
      end_run(run_id, cjson.decode(raw))
    else
      redis.call('ZREM', K.deadlines, run_id)
    end
  end
  return #expired
end
