-- submit: enqueue a batch of new tasks (a single submit is a batch of one).
--
-- KEYS[1] {ns}:queues  SET of known queue names
-- KEYS[2] {ns}:all     STREAM listing index: one entry per call (per INDEX_IDS_PER_ENTRY of its tasks),
--                      field `ids` = their task ids in submission order, space-separated
-- ARGV[1] namespace prefix, ARGV[2] number of tasks, ARGV[3] default result ttl s, then 13 fields per task:
--   id, task_name, args json ("" = []), kwargs json ("" = {}), queue, priority, max_retries ("" = default),
--   time_limit ms ("" = default),
--   countdown ms (0 = none), eta epoch ms (0 = none), idempotency key ("" = none), idempotency ttl s,
--   traceparent ("" = none)
-- Returns one flat array, three values per task: task_id, state, duplicate 0|1 (no table per task to build
-- and encode); or the error `QUEUES <max>`, having stored nothing, when a task names a new queue and the
-- namespace has max_queues already.
--
-- Why one script: the idempotency check, the record, the queue entry and the index must appear together or
-- not at all. A crash between "record written" and "queued" would leave a task that never runs; between
-- "queued" and "idempotency key set" a client retry would enqueue a duplicate.
--
-- Why it gathers: one HSET per record, then one LPUSH per queue list, one XADD for the index and one SADD per
-- queue for the whole batch. A batch of 100 costs a few hundred cheap calls instead of six per task.
--
-- Why the index is a stream: it only needs "newest first, resumable". A sorted set paid a skiplist and a
-- dictionary insert per task (a third of this script's time, 140 bytes per task); a stream entry holding the
-- batch as one string costs one append and the ids' own bytes. It ages out with the records it points at
-- (XTRIM MINID: the result TTL) and is capped at max_finished entries (XADD MAXLEN), both trimming whole
-- nodes. A cap on entries bounds ids only if an entry's ids are bounded too, so a big batch is split into
-- entries of at most INDEX_IDS_PER_ENTRY ids: the index holds at most that many times max_finished ids,
-- and each entry's overhead is still spread over many tasks.
--
-- Why queues are capped: a queue is created by use, and each costs keys, counters and metric series for
-- good, so client-chosen names must not add them without bound (max_queues, default 1,000).
local n = tonumber(ARGV[2])
local now_micros = now_us()
local now = math.floor(now_micros / 1000)
local woken = {}
local pushes = {}   -- list key -> ids in submission order
local push_order = {}
local index = {}    -- the ids of the listing index's entry
local result_ttl = retention(tonumber(ARGV[3]), 0)
local out = {}
local F = 13

-- Refuse the call before writing anything if its new queues would pass the cap.
local max_queues = limit('max_queues', DEFAULT_MAX_QUEUES)
local queues_after = redis.call('SCARD', KEYS[1])
local new_queue = {}
for i = 0, n - 1 do
  local q = ARGV[4 + i * F + 4]
  if not new_queue[q] and redis.call('SISMEMBER', KEYS[1], q) == 0 then
    new_queue[q] = true
    queues_after = queues_after + 1
  end
end
if queues_after > max_queues then return redis.error_reply('QUEUES ' .. max_queues) end
for i = 0, n - 1 do
  local b = 4 + i * F
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
        out[#out + 1] = prev; out[#out + 1] = state; out[#out + 1] = 1
        existing = true
      end
    end
  end

  if not existing then
    local due = 0
    if countdown > 0 then due = now + countdown end
    if eta > 0 then due = eta end
    -- Empty or default values are not stored: a queued no-op task must stay small in memory.
    local fields = { 'name', name, 'submitted', now_micros }
    if q ~= DEFAULT_QUEUE then fields[#fields + 1] = 'queue'; fields[#fields + 1] = q end
    if prio ~= DEFAULT_PRIORITY then fields[#fields + 1] = 'prio'; fields[#fields + 1] = prio end
    if max_retries ~= '' then fields[#fields + 1] = 'max_retries'; fields[#fields + 1] = max_retries end
    if limit ~= '' then fields[#fields + 1] = 'limit'; fields[#fields + 1] = limit end
    if args ~= '' then fields[#fields + 1] = 'args'; fields[#fields + 1] = args end
    if kwargs ~= '' then fields[#fields + 1] = 'kwargs'; fields[#fields + 1] = kwargs end
    if trace ~= '' then fields[#fields + 1] = 'trace'; fields[#fields + 1] = trace end
    if idem ~= '' then
      fields[#fields + 1] = 'idem'; fields[#fields + 1] = idem
      redis.call('SET', NS .. ':idem:' .. idem, id, 'EX', idem_ttl)
    end
    local state
    if due > now then
      state = 'scheduled'
      fields[#fields + 1] = 'eta'; fields[#fields + 1] = due
      redis.call('ZADD', sched_key(q), due, id)
    else
      state = 'queued'
      local lkey = queue_key(q, prio)
      if not pushes[lkey] then
        pushes[lkey] = {}
        push_order[#push_order + 1] = lkey
      end
      table.insert(pushes[lkey], id)
    end
    fields[#fields + 1] = 'state'; fields[#fields + 1] = state
    redis.call('HSET', task_key(id), unpack(fields))
    -- Idle workers sleep until the earliest due time they know of; a scheduled task may be earlier.
    woken[q] = true
    index[#index + 1] = id
    out[#out + 1] = id; out[#out + 1] = state; out[#out + 1] = 0
  end
end
-- LPUSH with several values pushes them left in order, so the first submitted stays rightmost: FIFO.
for _, lkey in ipairs(push_order) do
  local ids = pushes[lkey]
  for s = 1, #ids, 1000 do
    redis.call('LPUSH', lkey, unpack(ids, s, math.min(s + 999, #ids)))
  end
end
if #index > 0 then
  redis.call('XTRIM', KEYS[2], 'MINID', '~', now - result_ttl * 1000)
  for s = 1, #index, INDEX_IDS_PER_ENTRY do
    local chunk = table.concat(index, ' ', s, math.min(s + INDEX_IDS_PER_ENTRY - 1, #index))
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', limit('max_finished', DEFAULT_MAX_FINISHED), '*', 'ids', chunk)
  end
end
for q, _ in pairs(woken) do
  redis.call('SADD', KEYS[1], q)
  wake(q)
end
return out
