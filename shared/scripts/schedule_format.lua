#!lua
-- schedule_format: how keys.schedules() packs a flow's schedule (included).
-- One hash, flow -> packed: cron, zone, offset, overlap, catch-up, max run ('' unset), the
-- tenant's byte length, each followed by \31, then tenant and user back to back (ids may hold
-- any byte). The previous release kept a hash per flow (c z o t u p w m, and b the buffered
-- due time); the scripts read it for one release and the next store moves it.
-- schedule_pack(cron, zone, offset, tenant, user, overlap, window, max_run) -> packed
-- schedule_unpack(packed) -> cron, zone, offset, tenant, user, overlap, window, max_run
local function schedule_pack(cron, zone, offset, tenant, user, overlap, window, max_run)
  return table.concat({ cron, zone, offset, overlap, window, max_run, #tenant }, '\31')
    .. '\31' .. tenant .. user
end

local SCHEDULE = '^([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31'
  .. '(%d+)\31()'
-- -> cron, zone, offset, tenant, user, overlap, catch-up, max run
local function schedule_unpack(packed)
  local cron, zone, offset, overlap, window, max_run, tenant_len, at =
    string.match(packed, SCHEDULE)
  local user_at = at + tonumber(tenant_len)
  return cron, zone, offset, string.sub(packed, at, user_at - 1), string.sub(packed, user_at),
    overlap, window, max_run
end
