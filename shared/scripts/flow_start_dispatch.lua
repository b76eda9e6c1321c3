#!lua
-- flow_start_dispatch: reclaim the slots of runs past their deadline, then admit waiting runs
-- in fair order (ticks, penalty changes); by usage, charges running runs first.
-- KEYS, ARGV[1..8]: see flow_start_common (ARGV[3] 0 for ticks).
-- ARGV[9] most expired runs to reclaim in this call
-- Returns: {'duplicate'} | {'done', runs reclaimed, runs admitted}
--#include flow_start_common
--#include flow_start_lease
--#include flow_start_queue
--#include flow_start_charge
if already_handled() then
  return { 'duplicate' }
end
local reclaimed = reap(tonumber(ARGV[FIRST_ARG]))
charge_running()
dispatch()
flush()
mark_handled()
return { 'done', reclaimed, admitted_count }
