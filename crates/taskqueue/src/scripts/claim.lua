-- claim: a worker takes up to N tasks from its queues; also the queue's housekeeping.
--
-- KEYS[1] {ns}:workers         ZSET worker id -> lease expiry ms
-- KEYS[2] {ns}:w:<wid>:active  SET ids this worker holds
-- KEYS[3] {ns}:stats           HASH global counters
-- ARGV[1] namespace, ARGV[2] worker id, ARGV[3] max tasks, ARGV[4] lease ms, ARGV[5] max recoveries,
-- ARGV[6] default result ttl s, ARGV[7] default dead-letter ttl s, ARGV[8..] queue names in the worker's order
-- Returns {1, next_wake_ms, n, then 12 fields per task} or {-1} when this worker's lease was lost.
--
-- Why one script: popping an id and marking it running under this worker's lease must be indivisible —
-- Celery's BRPOP followed by a separate "unacked" write loses the task if the worker dies in between. The
-- same call also (a) renews this worker's lease, (b) recovers the tasks of workers whose lease expired and
-- (c) moves due scheduled tasks into their queues. Doing that housekeeping here means there is no separate
-- scheduler or reaper process to run, fail or elect: every idle worker wakes up by the time the next
-- scheduled task or lease is due (next_wake_ms) and performs it.
local wid, max, lease = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local max_recoveries = tonumber(ARGV[5])
local result_ttl, dead_ttl = retention(tonumber(ARGV[6]), tonumber(ARGV[7]))
local queues = {}
for i = 8, #ARGV do queues[#queues + 1] = ARGV[i] end
-- Before any lease is judged: push leases back if Redis has just come back from an outage (common.lua).
observe_outage(KEYS[1], math.floor(lease / 3))
local now_micros = now_us()
local now = math.floor(now_micros / 1000)

if not redis.call('ZSCORE', KEYS[1], wid) then return { -1 } end
redis.call('ZADD', KEYS[1], now + lease, wid)

-- (b) Recover the tasks of workers whose lease expired while Redis served (SIGKILL, crash, partition).
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 16)
for _, dw in ipairs(dead) do
  local akey = active_key(dw)
  for _, id in ipairs(redis.call('SMEMBERS', akey)) do
    local key = task_key(id)
    local r = redis.call('HMGET', key, 'state', 'worker', 'queue', 'prio', 'cancel', 'recoveries')
    if r[1] == 'running' and r[2] == dw then
      local q = queue_of(r[3])
      local recoveries = tonumber(r[6] or '0') + 1
      redis.call('HINCRBY', stats_key(q), 'running', -1)
      redis.call('HINCRBY', KEYS[3], 'lease_expiries', 1)
      if r[5] == '1' then
        redis.call('HSET', key, 'state', 'cancelled', 'completed', now_micros, 'error', 'cancelled while its worker was lost')
        redis.call('HDEL', key, 'worker', 'cancel')
        redis.call('EXPIRE', key, result_ttl)
        redis.call('ZADD', NS .. ':done', now, id)
        redis.call('HINCRBY', stats_key(q), 'cancelled', 1)
      elseif recoveries > max_recoveries then
        -- Poison-pill quarantine: a task that keeps killing its workers goes to the dead-letter index.
        redis.call('HSET', key, 'state', 'failed', 'completed', now_micros, 'recoveries', recoveries,
          'error', 'worker lost ' .. recoveries .. ' times while running this task')
        redis.call('HDEL', key, 'worker')
        redis.call('ZADD', NS .. ':dead', now, id)
        redis.call('ZADD', NS .. ':done', now, id)
        redis.call('EXPIRE', key, dead_ttl)
        redis.call('HINCRBY', stats_key(q), 'failed', 1)
      else
        -- Front of its priority list: it has waited already. A lost lease is not a failed attempt, so the
        -- retry budget is untouched (recoveries are bounded separately above).
        redis.call('HSET', key, 'state', 'queued', 'recoveries', recoveries)
        redis.call('HDEL', key, 'worker', 'started')
        redis.call('RPUSH', queue_key(q, prio_of(r[4])), id)
        redis.call('HINCRBY', stats_key(q), 'recovered', 1)
        wake(q)
      end
      task_event(id, 'recovered')
    end
  end
  redis.call('DEL', akey, worker_key(dw))
  redis.call('ZREM', KEYS[1], dw)
end
if #dead > 0 then trim_finished(now, result_ttl, dead_ttl) end

-- (c) Promote due scheduled tasks (eta reached, or retry backoff over).
for _, q in ipairs(queues) do
  local skey = sched_key(q)
  local due = redis.call('ZRANGEBYSCORE', skey, '-inf', now, 'LIMIT', 0, 256)
  -- Latest-due first, so that after the RPUSHes the earliest-due task is next in line.
  for i = #due, 1, -1 do
    local id = due[i]
    redis.call('ZREM', skey, id)
    local key = task_key(id)
    local r = redis.call('HMGET', key, 'state', 'prio')
    if r[1] == 'scheduled' then
      redis.call('HSET', key, 'state', 'queued')
      redis.call('HDEL', key, 'eta')
      redis.call('RPUSH', queue_key(q, prio_of(r[2])), id)
      task_event(id, 'queued')
    end
  end
end

-- Take up to `max` tasks: most urgent priority first, then the worker's queue order.
local out = { 1, 0, 0 }
local taken = 0
local akey = KEYS[2]
for p = 9, 0, -1 do
  for _, q in ipairs(queues) do
    local lkey = queue_key(q, p)
    while taken < max do
      local id = redis.call('RPOP', lkey)
      if not id then break end
      local key = task_key(id)
      local r = redis.call('HMGET', key, 'state', 'name', 'args', 'kwargs', 'attempt', 'retries',
        'max_retries', 'limit', 'trace', 'submitted')
      -- Anything but 'queued' is a leftover of a record that expired or was cleaned up: skip it.
      if r[1] == 'queued' then
        local attempt = tonumber(r[5] or '0') + 1
        local fence = redis.call('HINCRBY', key, 'fence', 1)
        redis.call('HSET', key, 'state', 'running', 'worker', wid, 'started', now_micros, 'attempt', attempt)
        redis.call('SADD', akey, id)
        redis.call('HINCRBY', stats_key(q), 'running', 1)
        task_event(id, 'running')
        taken = taken + 1
        local n = #out
        out[n + 1] = id
        out[n + 2] = fence
        out[n + 3] = r[2]
        out[n + 4] = r[3] or ''
        out[n + 5] = r[4] or ''
        out[n + 6] = attempt
        out[n + 7] = r[6] or '0'
        out[n + 8] = r[7] or '' -- absent: the default budget and limit (the caller knows them)
        out[n + 9] = r[8] or ''
        out[n + 10] = r[9] or ''
        out[n + 11] = q
        out[n + 12] = r[10] or '0'
      end
    end
  end
end
out[3] = taken

-- When must an idle worker look again? At the next due scheduled task or the next lease expiry.
local next_at = -1
for _, q in ipairs(queues) do
  local first = redis.call('ZRANGE', sched_key(q), 0, 0, 'WITHSCORES')
  if first[2] then
    local at = tonumber(first[2])
    if next_at < 0 or at < next_at then next_at = at end
  end
end
local soonest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if soonest[2] then
  local at = tonumber(soonest[2])
  if next_at < 0 or at < next_at then next_at = at end
end
if next_at >= 0 then
  local d = next_at - now
  if d < 0 then d = 0 end
  out[2] = d
else
  out[2] = -1
end
return out
