#!lua
-- outbox_release: give unsent claimed events back to the head of their outbox, in order.
-- KEYS[1] outbox list  KEYS[2] in-flight sorted set
-- ARGV[1..n] the entries, oldest first
-- Returns: how many were still claimed (and so went back).
local back = 0
for i = #ARGV, 1, -1 do
  if redis.call('ZREM', KEYS[2], ARGV[i]) == 1 then
    redis.call('LPUSH', KEYS[1], ARGV[i])
    back = back + 1
  end
end
return back
