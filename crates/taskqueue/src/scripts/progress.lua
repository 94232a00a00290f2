-- progress: store a running attempt's progress report.
--
-- KEYS[1] {ns}:t:<id>
-- ARGV[1] namespace, ARGV[2] task id, ARGV[3] fence, ARGV[4] progress json
-- Returns 1, or 0 if the attempt is no longer current (lease lost, cancelled, finished).
--
-- Why a script: the fence check and the write are one step, so a stale attempt can't overwrite the progress
-- of the attempt that replaced it.
local r = redis.call('HMGET', KEYS[1], 'state', 'fence')
if r[1] ~= 'running' or r[2] ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], 'progress', ARGV[4])
task_event(ARGV[2], 'progress')
return 1
