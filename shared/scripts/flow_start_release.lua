#!lua
-- flow_start_release: a run ended (flow.execution.completed/failed): free its slot and lease
-- if the fencing token matches, start a buffered run, and admit the next waiting runs.
-- KEYS, ARGV[1..8]: see flow_start_common.
-- ARGV[9] run id   ARGV[10] fencing token of the ended run
-- Returns: {'duplicate'} | {'released'|'stale'|'unknown', runs admitted}
--#include flow_start_common
--#include flow_start_lease
--#include flow_start_queue
if already_handled() then
  return { 'duplicate' }
end
local run_id = ARGV[FIRST_ARG]
local token = tonumber(ARGV[FIRST_ARG + 1])
local raw = redis.call('HGET', K.runs, run_id)
local result = 'unknown'  -- already released, or reclaimed at its deadline
if raw then
  local run = cjson.decode(raw)
  if run.k == token then
    end_run(run_id, run)
    result = 'released'
  else
    result = 'stale'  -- a token that is not the run's: never frees anything
  end
end
dispatch()
flush()
mark_handled()
return { result, admitted_count }
