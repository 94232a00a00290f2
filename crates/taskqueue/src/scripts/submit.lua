-- submit: enqueue a batch of new tasks (a single submit is a batch of one).
--
-- KEYS[1] {ns}:queues  SET of known queue names
-- KEYS[2] {ns}:all     ZSET task id -> submitted_at ms (listing index)
-- ARGV[1] namespace prefix, ARGV[2] number of tasks, then 13 fields per task:
--   id, task_name, args json ("" = []), kwargs json ("" = {}), queue, priority, max_retries, time_limit ms,
--   countdown ms (0 = none), eta epoch ms (0 = none), idempotency key ("" = none), idempotency ttl s,
--   traceparent ("" = none)
-- Returns, per task: {task_id, state, duplicate 0|1}.
--
-- Why one script: the idempotency check, the record, the queue entry and the index must appear together or
-- not at all. A crash between "record written" and "queued" would leave a task that never runs; between
-- "queued" and "idempotency key set" a client retry would enqueue a duplicate.
local n = tonumber(ARGV[2])
local now_micros = now_us()
local now = math.floor(now_micros / 1000)
local woken = {}
local out = {}
local F = 13
for i = 0, n - 1 do
  local b = 3 + i * F
  local id, name, args, kwargs = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local q, prio, max_retries, limit = ARGV[b + 4], ARGV[b + 5], ARGV[b + 6], ARGV[b + 7]
  local countdown, eta = tonumber(ARGV[b + 8]), tonumber(ARGV[b + 9])
  local idem, idem_ttl, trace = ARGV[b + 10], ARGV[b + 11], ARGV[b + 12]

  local existing = false
  if idem ~= '' then
    local prev = redis.call('GET', NS .. ':idem:' .. idem)
    if prev then
      local state = redis.call('HGET', task_key(prev), 'state')
      if state then
        out[#out + 1] = { prev, state, 1 }
        existing = true
      end
    end
  end

  if not existing then
    local due = 0
    if countdown > 0 then due = now + countdown end
    if eta > 0 then due = eta end
    local key = task_key(id)
    local state
    if due > now then
      state = 'scheduled'
      redis.call('HSET', key, 'state', state, 'eta', due)
      redis.call('ZADD', sched_key(q), due, id)
      -- Idle workers sleep until the earliest due time they know of; this one may be earlier.
      woken[q] = true
    else
      state = 'queued'
      redis.call('HSET', key, 'state', state)
      redis.call('LPUSH', queue_key(q, prio), id)
      woken[q] = true
    end
    -- Empty or default values are not stored: a queued no-op task must stay small in memory.
    redis.call('HSET', key, 'name', name, 'queue', q, 'prio', prio, 'submitted', now_micros,
      'max_retries', max_retries, 'limit', limit)
    if args ~= '' then redis.call('HSET', key, 'args', args) end
    if kwargs ~= '' then redis.call('HSET', key, 'kwargs', kwargs) end
    if trace ~= '' then redis.call('HSET', key, 'trace', trace) end
    if idem ~= '' then
      redis.call('HSET', key, 'idem', idem)
      redis.call('SET', NS .. ':idem:' .. idem, id, 'EX', idem_ttl)
    end
    redis.call('ZADD', KEYS[2], now, id)
    redis.call('SADD', KEYS[1], q)
    out[#out + 1] = { id, state, 0 }
  end
end
for q, _ in pairs(woken) do wake(q) end
return out
