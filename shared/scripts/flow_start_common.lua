#!lua
-- flow_start_common: the header every flow-start admission script shares (included).
-- KEYS[1] dedupe key of the incoming event (unused when ARGV[3] is 0)
-- KEYS[2] outbox of the {adm} tag
-- KEYS[3..24] the admission keys and key families, in the order of keys.admission_keys():
--   due, deployed, fence, runs, deadlines, count, bucket, waiting, fair tenants, fair clock,
--   the families schedule (the previous release's), lease, waiting queue, waiting users,
--   fair users, fair flows, then run costs, waiting since, charged through, schedules,
--   buffered due times, flows waiting since
-- ARGV[1] JSON {"admitted"|"skipped"|"deferred"|"missed": event type} (the catalogue's types)
-- ARGV[2] now (epoch seconds)   ARGV[3] dedupe TTL seconds (0: no dedupe, e.g. ticks)
-- ARGV[4] source of emitted events   ARGV[5] global execution slots
-- ARGV[6] JSON {"*": [weight, max concurrent, starts/min, max waiting, cost per slot-second,
--         cost mode (0 count, 1 usage), half-life (s), aging bound (s), default estimate (s)],
--         "<tenant>": [the first five]}
-- ARGV[7] JSON {"tenant:<id>"|"user:<id>"|"flow:<id>": [rate factor, weight factor, suspended]}
--         (policy file x penalties, read by the caller at decision time)
-- ARGV[8] most runs one call may admit (bounds the script's running time)
-- Script-specific arguments start at ARGV[9] (FIRST_ARG).
--#include keys_common
--#include schedule_format

local EVENT_TYPES = cjson.decode(ARGV[1])
local NOW = tonumber(ARGV[2])
local DEDUPE_TTL = tonumber(ARGV[3])
local SOURCE = ARGV[4]
local SLOTS = tonumber(ARGV[5])
local LIMITS = cjson.decode(ARGV[6])
local PENALTIES = cjson.decode(ARGV[7])
local BUDGET = tonumber(ARGV[8])
local FIRST_ARG = 9
local RUN_GRACE_SECONDS = 60  -- the watchdog's flow.execution.failed normally comes first

local K = {
  due = KEYS[3], deployed = KEYS[4], fence = KEYS[5], runs = KEYS[6], deadlines = KEYS[7],
  count = KEYS[8], bucket = KEYS[9], waiting = KEYS[10], tenants = KEYS[11], clock = KEYS[12],
  sched = KEYS[13], lease = KEYS[14], queue = KEYS[15], queue_users = KEYS[16],
  users = KEYS[17], flows = KEYS[18], cost = KEYS[19], age = KEYS[20],
  charged = KEYS[21], schedules = KEYS[22], buffered = KEYS[23], flow_age = KEYS[24],
}

local function pair(first, second)
  return #first .. ':' .. first .. ':' .. second
end
local function sched_key(flow) return family_key(K.sched, flow) end
local function lease_key(flow) return family_key(K.lease, flow) end
local function queue_key(flow, user) return family_key(K.queue, pair(flow, user)) end
local function queue_users_key(flow) return family_key(K.queue_users, flow) end
local function users_key(tenant) return family_key(K.users, tenant) end
local function flows_key(tenant, user) return family_key(K.flows, pair(tenant, user)) end

-- the previous release's hash of a flow, packed; nil without one
local function schedule_of_old(flow)
  local v = redis.call('HMGET', sched_key(flow), 'c', 'z', 'o', 't', 'u', 'p', 'w', 'm')
  if not v[1] then
    return nil
  end
  for j = 2, 8 do
    v[j] = v[j] or ''
  end
  return schedule_pack(v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8])
end

-- the flow's packed schedule, in either form; nil without one
local function schedule_of(flow)
  return redis.call('HGET', K.schedules, flow) or schedule_of_old(flow)
end

-- the flow's buffered due time `due|limit` or `due|limit|msg` (overlap buffer_one; the msg of
-- a hub scheduler's run), in either form; or false
local function buffered_of(flow)
  return redis.call('HGET', K.buffered, flow) or redis.call('HGET', sched_key(flow), 'b')
end

local function buffered_forget(flow)
  redis.call('HDEL', K.buffered, flow)
  redis.call('HDEL', sched_key(flow), 'b')
end

-- the flow's schedule gone, in both forms (its buffered due time too)
local function schedule_forget(flow)
  redis.call('HDEL', K.schedules, flow)
  redis.call('HDEL', K.buffered, flow)
  redis.call('DEL', sched_key(flow))
end

local function already_handled()
  return DEDUPE_TTL > 0 and redis.call('EXISTS', KEYS[1]) == 1
end

local function mark_handled()
  if DEDUPE_TTL > 0 then
    redis.call('SET', KEYS[1], '1', 'EX', DEDUPE_TTL)
  end
end

local limits_cache = {}
local function limits(tenant)
  local found = limits_cache[tenant]
  if not found then
    local l = LIMITS[tenant] or LIMITS['*']
    found = { weight = l[1], cap = l[2], rate = l[3], max_waiting = l[4], factor = l[5] or 1,
      running_field = 't:' .. tenant, waiting_field = 'w:' .. tenant }  -- its K.count fields
    limits_cache[tenant] = found
  end
  return found
end

-- rate factor, weight factor, suspended (no key built when nothing is penalised: the usual
-- case, and a tick asks three times per run)
-- PENALTIES is keyed as shared/keys.py `penalty_member` names subjects: `tenant:<id>`, and a
-- user or flow with its tenant, `user:<tenant>\31<id>` (a user of two tenants is punished in
-- one of them only).
local NO_PENALTIES = next(PENALTIES) == nil
local function penalty(level, id, tenant)
  if NO_PENALTIES then
    return 1, 1, false
  end
  local member = level .. ':' .. id
  if level ~= 'tenant' then
    member = level .. ':' .. tenant .. '\31' .. id
  end
  local p = PENALTIES[member]
  if p then
    return p[1], p[2], p[3] == 1
  end
  return 1, 1, false
end

local function suspended(level, id, tenant)
  local _, _, is_suspended = penalty(level, id, tenant)
  return is_suspended
end

-- Many runs per call (a tick fires up to a thousand): counters and the fencing counter are
-- read once and written back once by flush(), and outbox entries are pushed in bulk.
local counts, dirty_counts = {}, {}
local function counter(field)
  local value = counts[field]
  if value == nil then
    value = tonumber(redis.call('HGET', K.count, field) or '0')
    counts[field] = value
  end
  return value
end

local function count_add(field, delta)
  counts[field] = counter(field) + delta
  dirty_counts[field] = true
end

-- a flow's running count field in K.count, built once per call
local FLOW_FIELDS = {}
local function flow_field(flow)
  local field = FLOW_FIELDS[flow]
  if not field then
    field = 'f:' .. flow
    FLOW_FIELDS[flow] = field
  end
  return field
end

-- the running counts of many flows read in one call (a tick's: no HGET per run)
local function flow_counts_prefetch(flows)
  local fields = {}
  for n, flow in ipairs(flows) do
    fields[n] = flow_field(flow)
  end
  for first = 1, #fields, 1000 do
    local last = math.min(first + 999, #fields)
    local values = redis.call('HMGET', K.count, unpack(fields, first, last))
    for j = 1, last - first + 1 do
      local field = fields[first + j - 1]
      if counts[field] == nil then
        counts[field] = tonumber(values[j] or '0')
      end
    end
  end
end

local fence = nil
local function next_token()
  fence = (fence or tonumber(redis.call('GET', K.fence) or '0')) + 1
  return fence
end

local OUTBOX, RUNS, DEADLINES, DUE, CHARGED = {}, {}, {}, {}, {}
local BUCKET_WRITES = {}  -- tenant -> {tokens, at}
local DEPLOYED = {}  -- flow -> deployed, when the caller read it for many flows at once

-- `command key a1 a2 ...` in chunks (Lua's unpack has a stack limit)
local function bulk(command, key, items)
  for first = 1, #items, 1000 do
    redis.call(command, key, unpack(items, first, math.min(first + 999, #items)))
  end
end

-- JSON text of a string / number without a cjson call when nothing needs escaping (ids);
-- remembered for the call: an event names its run, flow, tenant and user several times
local QUOTED = {}
local UNSAFE = '[%c"\\/\128-\255]'  -- what JSON escapes (cjson escapes '/' too)
local function quote(text)
  local found = QUOTED[text]
  if not found then
    if string.find(text, UNSAFE) then
      found = cjson.encode(text)
    else
      found = '"' .. text .. '"'
    end
    QUOTED[text] = found
  end
  return found
end

local floor, abs, format = math.floor, math.abs, string.format  -- upvalues: the hot paths
local function number(value)
  if value == floor(value) and abs(value) < 1e15 then
    return format('%d', value)
  end
  return format('%.17g', value)
end

-- number() of a value many runs of a call share (their due time, NOW)
local shared_number_value, shared_number_text = nil, nil
local function shared_number(value)
  if value ~= shared_number_value then
    shared_number_value, shared_number_text = value, number(value)
  end
  return shared_number_text
end

-- Outbox entries in the shape of OutgoingEvent.to_json(); `data_json` is spliced in as is so
-- that a run's msg reaches the event byte for byte (cjson would mangle [] and big numbers).
-- A run id is unique: quoted in place when nothing needs escaping (not remembered, no copies).
local function emit(kind, data_json, tenant, flow, run_id)
  if string.find(run_id, UNSAFE) then
    OUTBOX[#OUTBOX + 1] = '{"data":' .. data_json
      .. ',"extensions":{"flowid":' .. quote(flow) .. ',"runid":' .. cjson.encode(run_id)
      .. ',"tenant":' .. quote(tenant) .. '},"id":' .. cjson.encode(run_id .. '-' .. kind)
      .. ',"source":' .. quote(SOURCE) .. ',"time":' .. ARGV[2]
      .. ',"type":' .. quote(EVENT_TYPES[kind]) .. '}'
  else
    OUTBOX[#OUTBOX + 1] = '{"data":' .. data_json
      .. ',"extensions":{"flowid":' .. quote(flow) .. ',"runid":"' .. run_id
      .. '","tenant":' .. quote(tenant) .. '},"id":"' .. run_id .. '-' .. kind
      .. '","source":' .. quote(SOURCE) .. ',"time":' .. ARGV[2]
      .. ',"type":' .. quote(EVENT_TYPES[kind]) .. '}'
  end
end

-- flow.execution.admitted (RunAdmitted) of a run, packed (a tick emits a thousand): what every
-- run of the call shares, the run's scheduledFor as number() writes it (cjson keeps 14
-- digits), the run record as stored in K.runs and its msg, joined by \31;
-- shared/events/envelope.py renders the event from it at send time (docs/architecture.md §7,
-- the packed admitted entry). No raw \31 can sit before the msg (cjson escapes control
-- characters; time, source and the catalogue's type have none); the msg comes last.
local ADMITTED_HEAD = nil  -- '!admitted', time, source, type: the same for every run of the call
local function emit_admitted(run, record_json, msg)
  if not ADMITTED_HEAD then
    ADMITTED_HEAD = '!admitted\31' .. ARGV[2] .. '\31' .. SOURCE .. '\31'
      .. EVENT_TYPES['admitted'] .. '\31'
  end
  OUTBOX[#OUTBOX + 1] = ADMITTED_HEAD .. shared_number(run.s) .. '\31' .. record_json .. '\31'
    .. msg
end

-- flow.execution.skipped / deferred / missed (RunNotStarted)
local function not_started(kind, run, reason)
  emit(kind, cjson.encode({ flowId = run.f, runId = run.id, scheduledFor = run.s,
    reason = reason, tenant = run.t }), run.t, run.f, run.id)
end

-- writes what the call batched; every entry script calls it before returning
local function flush()
  local fields, gone = {}, {}
  for field in pairs(dirty_counts) do
    if counts[field] > 0 then
      fields[#fields + 1] = field
      fields[#fields + 1] = counts[field]
    else
      gone[#gone + 1] = field  -- zero counters cost memory for nothing
    end
  end
  bulk('HSET', K.count, fields)
  bulk('HDEL', K.count, gone)
  if fence then
    redis.call('SET', K.fence, fence)
  end
  local bucket_items = {}
  for tenant, bucket in pairs(BUCKET_WRITES) do
    bucket_items[#bucket_items + 1] = tenant
    bucket_items[#bucket_items + 1] = bucket[1] .. ':' .. ARGV[2]  -- taken at NOW
  end
  bulk('HSET', K.bucket, bucket_items)
  bulk('HSET', K.runs, RUNS)
  bulk('ZADD', K.deadlines, DEADLINES)
  bulk('ZADD', K.due, DUE)
  bulk('ZADD', K.charged, CHARGED)
  bulk('RPUSH', KEYS[2], OUTBOX)
end
