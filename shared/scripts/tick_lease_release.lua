#!lua
-- tick_lease_release: give a function's tick lease back, only by the tick that holds it.
-- KEYS[1] tick lease key (a string holding the holder's random token)
-- ARGV[1] the holder's token
-- Returns: 1 released, 0 not ours (expired and taken over by another tick, or gone).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
