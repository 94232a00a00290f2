-- cancel: cancel a task in whatever state it is.
--
-- KEYS[1] {ns}:t:<id>  the task record
-- KEYS[2] {ns}:done    ZSET terminal tasks
-- ARGV[1] namespace, ARGV[2] task id, ARGV[3] default result ttl s, ARGV[4] default dead-letter ttl s
-- Returns {outcome, state}: outcome is 'cancelled' (removed from its queue or schedule), 'requested' (running:
-- its worker was told), 'terminal' (already ended; state says how) or 'missing'.
--
-- Why one script: a queued task must leave its queue and become cancelled in one step, or a worker could
-- claim it in between and run a task its submitter cancelled.
local id = ARGV[2]
local result_ttl, dead_ttl = retention(tonumber(ARGV[3]), tonumber(ARGV[4]))
local key = KEYS[1]
local r = redis.call('HMGET', key, 'state', 'queue', 'prio', 'worker')
local state, q = r[1], queue_of(r[2])
if not state then return { 'missing', '' } end
local now_micros = now_us()
local now = math.floor(now_micros / 1000)
if state == 'queued' or state == 'scheduled' then
  if state == 'queued' then
    redis.call('LREM', queue_key(q, prio_of(r[3])), 1, id)
  else
    redis.call('ZREM', sched_key(q), id)
  end
  redis.call('HSET', key, 'state', 'cancelled', 'completed', now_micros)
  redis.call('HDEL', key, 'eta')
  redis.call('EXPIRE', key, result_ttl)
  redis.call('ZADD', KEYS[2], now, id)
  redis.call('HINCRBY', stats_key(q), 'cancelled', 1)
  task_event(id, 'cancelled')
  trim_finished(now, result_ttl, dead_ttl)
  return { 'cancelled', 'cancelled' }
elseif state == 'running' then
  redis.call('HSET', key, 'cancel', '1')
  redis.call('PUBLISH', NS .. ':ctl:' .. r[4], id)
  task_event(id, 'cancel_requested')
  return { 'requested', state }
end
return { 'terminal', state }
