#!lua
-- ledger_read: the sums of every metric over the live buckets of each ring (read only).
-- Summing here returns a dozen numbers per ring instead of every field of every bucket.
-- KEYS[i] ledger ring i
-- ARGV[1] now (seconds)   ARGV[2] slots per ring   ARGV[3] metric fields per slot (M)
-- ARGV[3 + i] bucket width (seconds) of ring i
-- Returns one array of M sums (as strings) per ring, in metric index order
local now = tonumber(ARGV[1])
local slots = tonumber(ARGV[2])
local metrics = tonumber(ARGV[3])
local out = {}
for i = 1, #KEYS do
  local current = math.floor(now / tonumber(ARGV[3 + i]))
  local raw = redis.call('HGETALL', KEYS[i])
  local live = {}
  for j = 1, #raw, 2 do
    if not string.find(raw[j], '.', 1, true) then
      local bucket = tonumber(raw[j + 1])
      live[raw[j]] = bucket > current - slots and bucket <= current
    end
  end
  local sums = {}
  for m = 1, metrics do
    sums[m] = 0
  end
  for j = 1, #raw, 2 do
    local slot, index = string.match(raw[j], '^(%d+)%.(%d+)$')
    if slot and live[slot] then
      local m = tonumber(index) + 1
      sums[m] = sums[m] + tonumber(raw[j + 1])
    end
  end
  for m = 1, metrics do
    sums[m] = string.format('%.17g', sums[m])
  end
  out[i] = sums
end
return out
