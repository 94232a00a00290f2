-- retry: put a failed or cancelled task back in its queue with a fresh retry budget (RetryTask).
--
-- KEYS[1] {ns}:t:<id>, KEYS[2] {ns}:dead, KEYS[3] {ns}:done
-- ARGV[1] namespace, ARGV[2] task id
-- Returns {outcome, state}: 'queued', 'invalid' (the task is not failed or cancelled) or 'missing'.
--
-- Why one script: leaving the dead-letter index, clearing the outcome and re-entering the queue must happen
-- together, or a crash could leave a task that is neither failed nor queued.
local id = ARGV[2]
local key = KEYS[1]
local r = redis.call('HMGET', key, 'state', 'queue', 'prio')
local state, q = r[1], queue_of(r[2])
if not state then return { 'missing', '' } end
if state ~= 'failed' and state ~= 'cancelled' then return { 'invalid', state } end
redis.call('PERSIST', key)
redis.call('HSET', key, 'state', 'queued', 'retries', 0, 'recoveries', 0)
redis.call('HDEL', key, 'error', 'result', 'completed', 'worker', 'started', 'progress', 'cancel', 'eta')
redis.call('ZREM', KEYS[2], id)
redis.call('ZREM', KEYS[3], id)
redis.call('LPUSH', queue_key(q, prio_of(r[3])), id)
task_event(id, 'queued')
wake(q)
return { 'queued', 'queued' }
