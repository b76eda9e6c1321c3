#!lua
-- flow_start_dispatch: reclaim the slots of runs past their deadline, then admit waiting runs
-- in fair order (ticks, penalty changes).
-- KEYS, ARGV[1..8]: see flow_start_common (ARGV[3] 0 for ticks).
-- ARGV[9] most expired runs to reclaim in this call
-- Returns: {'duplicate'} | {'done', runs reclaimed, runs admitted}
--#include flow_start_common
--#include flow_start_lease
--#include flow_start_queue
if already_handled() then
  return { 'duplicate' }
end
local reclaimed = reap(tonumber(ARGV[FIRST_ARG]))
dispatch()
flush()
mark_handled()
return { 'done', reclaimed, admitted_count }
