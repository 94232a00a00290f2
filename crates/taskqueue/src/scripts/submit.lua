-- submit: enqueue a batch of new tasks (a single submit is a batch of one).
--
-- KEYS[1] {ns}:queues  SET of known queue names
-- KEYS[2] {ns}:all     STREAM listing index: one entry per call (per INDEX_IDS_PER_ENTRY of its tasks),
--                      field `ids` = their task ids in submission order, space-separated
-- KEYS[3] {ns}:all:n   STRING how many ids the listing index holds
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
-- batch as one string costs one append and the ids' own bytes (a big batch is split into entries of at most
-- INDEX_IDS_PER_ENTRY ids, so one entry stays small to read and to drop).
--
-- Why it is trimmed here, by ids: its memory is the ids it holds, and a cap on entries (XADD MAXLEN) would
-- let 100,000 entries of batched submits hold 1.6 million. So the call keeps a count of the ids held and
-- drops the oldest entries while the count is over 2 × max_finished (room for every finished record kept
-- and as many queued or running tasks again), and entries older than the result TTL (their records have
-- expired). Each call drops a bounded number of entries, a few more than it adds, so a lowered cap or a
-- day-old backlog is caught up over later calls instead of in one long script.
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
  -- A missing count (or one left behind by a deleted stream) restarts from what the stream holds, counting
  -- one id per entry: under rather than over, so it never trims what it should keep.
  local held = 0
  local len = redis.call('XLEN', KEYS[2])
  if len > 0 then held = tonumber(redis.call('GET', KEYS[3])) or len end
  local added = 0
  for s = 1, #index, INDEX_IDS_PER_ENTRY do
    local chunk = table.concat(index, ' ', s, math.min(s + INDEX_IDS_PER_ENTRY - 1, #index))
    redis.call('XADD', KEYS[2], '*', 'ids', chunk)
    added = added + 1
  end
  held = held + #index
  local max_ids = 2 * limit('max_finished', DEFAULT_MAX_FINISHED)
  local budget = 2 * added + 8
  local gone = {}
  local function drop(entry)
    gone[#gone + 1] = entry[1]
    local _, spaces = string.gsub(entry[2][2], ' ', '')
    held = held - spaces - 1
  end
  -- Entries older than the result TTL (an id of milliseconds only ends at that millisecond's last entry).
  for _, e in ipairs(redis.call('XRANGE', KEYS[2], '-', now - result_ttl * 1000 - 1, 'COUNT', budget)) do
    drop(e)
  end
  -- Then the oldest while over the cap; each entry holds at least one id, so `excess` entries are enough.
  local excess = held - max_ids
  if excess > 0 and #gone < budget then
    local from = '-'
    if #gone > 0 then from = '(' .. gone[#gone] end
    for _, e in ipairs(redis.call('XRANGE', KEYS[2], from, '+', 'COUNT', math.min(excess, budget - #gone))) do
      if held <= max_ids then break end
      drop(e)
    end
  end
  if #gone > 0 then redis.call('XDEL', KEYS[2], unpack(gone)) end
  redis.call('SET', KEYS[3], math.max(held, 0))
end
for q, _ in pairs(woken) do
  redis.call('SADD', KEYS[1], q)
  wake(q)
end
return out
