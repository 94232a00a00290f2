-- complete: record the outcome of a batch of attempts that one worker finished.
--
-- KEYS[1] {ns}:w:<wid>:active  SET ids this worker holds
-- KEYS[2] {ns}:dead            ZSET dead-letter index (failed for good), id -> failed at ms
-- KEYS[3] {ns}:done            ZSET terminal tasks, id -> completed at ms
-- KEYS[4] {ns}:stats           HASH global counters
-- ARGV[1] namespace, ARGV[2] worker id, ARGV[3] default result ttl s, ARGV[4] default dead-letter ttl s,
-- ARGV[5] dead-letter cap, ARGV[6] count, then 5 fields per outcome:
--   task id, fence, kind (ok | retry | fail | cancelled | requeue), payload (result json or error), delay ms
-- Returns, per outcome: the resulting state (for an outcome recorded before, too: a retry after a lost
-- reply), or 'stale' when the fence no longer matches.
--
-- Why one script, and why fenced: the state check and the write must be indivisible, or a worker whose
-- lease expired (its task already recovered and claimed again with a higher fence) could overwrite the newer
-- attempt. A stale completion changes nothing but a counter. Each applied outcome leaves its fence in the
-- record's `settled` field, so sending the same batch again (its reply was lost) reports what was done
-- instead of calling it stale. Batching outcomes amortises the round trip when
-- a worker finishes many short tasks.
local wid = ARGV[2]
local result_ttl, dead_ttl = retention(tonumber(ARGV[3]), tonumber(ARGV[4]))
local dead_cap = tonumber(ARGV[5])
local n = tonumber(ARGV[6])
local now_micros = now_us()
local now = math.floor(now_micros / 1000)
local out = {}
local failed_any = false
for i = 0, n - 1 do
  local b = 7 + i * 5
  local id, fence, kind, payload, delay = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], tonumber(ARGV[b + 4])
  local key = task_key(id)
  local r = redis.call('HMGET', key, 'state', 'fence', 'worker', 'queue', 'prio', 'retries', 'max_retries',
    'settled')
  if r[8] == fence and r[2] == fence then
    -- This very outcome was recorded already: a retry after a reply that got lost. Say what it did.
    redis.call('SREM', KEYS[1], id)
    out[#out + 1] = r[1]
  elseif r[1] ~= 'running' or r[2] ~= fence or r[3] ~= wid then
    redis.call('HINCRBY', KEYS[4], 'stale_completions', 1)
    out[#out + 1] = 'stale'
  else
    local q = queue_of(r[4])
    local sq = stats_key(q)
    redis.call('SREM', KEYS[1], id)
    redis.call('HDEL', key, 'cancel')
    -- The fence of the last outcome recorded, so a replay of it is recognised (above).
    redis.call('HSET', key, 'settled', fence)
    if kind == 'retry' and tonumber(r[6] or '0') >= tonumber(r[7] or DEFAULT_MAX_RETRIES) then
      kind = 'fail' -- the budget is checked here, against the record, not trusted from the worker
    end
    local state
    if kind == 'ok' then
      state = 'succeeded'
      redis.call('HSET', key, 'state', state, 'result', payload, 'completed', now_micros)
      redis.call('HDEL', key, 'error')
      redis.call('EXPIRE', key, result_ttl)
      redis.call('ZADD', KEYS[3], now, id)
      redis.call('HINCRBY', sq, 'succeeded', 1)
    elseif kind == 'retry' then
      state = 'scheduled'
      local due = now + delay
      redis.call('HSET', key, 'state', state, 'error', payload, 'eta', due)
      redis.call('HINCRBY', key, 'retries', 1)
      redis.call('HDEL', key, 'worker')
      redis.call('ZADD', sched_key(q), due, id)
      redis.call('HINCRBY', sq, 'retried', 1)
      wake(q) -- idle workers re-read the earliest due time
    elseif kind == 'fail' then
      state = 'failed'
      redis.call('HSET', key, 'state', state, 'error', payload, 'completed', now_micros)
      redis.call('EXPIRE', key, dead_ttl)
      redis.call('ZADD', KEYS[2], now, id)
      redis.call('ZADD', KEYS[3], now, id)
      redis.call('HINCRBY', sq, 'failed', 1)
      failed_any = true
    elseif kind == 'cancelled' then
      state = 'cancelled'
      redis.call('HSET', key, 'state', state, 'error', payload, 'completed', now_micros)
      redis.call('EXPIRE', key, result_ttl)
      redis.call('ZADD', KEYS[3], now, id)
      redis.call('HINCRBY', sq, 'cancelled', 1)
    else
      -- 'requeue': the worker is shutting down and never finished this attempt; it does not count.
      state = 'queued'
      give_back(id, q, prio_of(r[5]))
    end
    if state ~= 'queued' then
      redis.call('HINCRBY', sq, 'running', -1)
      task_event(id, state)
    end
    out[#out + 1] = state
  end
end
trim_finished(now, result_ttl, dead_ttl)
if failed_any then
  -- Keep the dead-letter index bounded by age and by count; records past the cap expire on their TTL.
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - dead_ttl * 1000)
  local excess = redis.call('ZCARD', KEYS[2]) - dead_cap
  if excess > 0 then redis.call('ZREMRANGEBYRANK', KEYS[2], 0, excess - 1) end
end
return out
