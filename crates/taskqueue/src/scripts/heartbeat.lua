-- heartbeat: register a worker, renew its lease and reconcile what it holds, or unregister it.
--
-- KEYS[1] {ns}:workers         ZSET worker id -> lease expiry ms
-- KEYS[2] {ns}:w:<wid>         HASH worker info (ListWorkers)
-- KEYS[3] {ns}:w:<wid>:active  SET ids this worker holds, as Redis knows it
-- ARGV[1] namespace, ARGV[2] worker id, ARGV[3] mode (register | renew | leave), ARGV[4] lease ms,
-- ARGV[5] info ttl s, ARGV[6] n, ARGV[7 .. 6+2n] the (id, fence) pairs the worker holds (running, or with an
-- outcome on its way), then info field/value pairs
-- Returns {status, stop, cancel, given_back}: status 1, or 0 when renewing a lease that was already declared
-- lost (the worker must then abandon its tasks, which were recovered and may run elsewhere, and register
-- again); stop, the held ids whose record moved on (recovered, expired, retried by hand) and must not run
-- on; cancel, the held ids whose cancellation was requested; given_back, how many ids Redis had under this
-- worker that the worker does not hold, now back in their queues.
--
-- Why a script: "is my lease still mine?" and "extend it" must be one step, or a reaper could recover the
-- worker's tasks between the check and the renewal and both would believe they own them.
--
-- Why reconcile here: the active set and the worker's own list can disagree, and nothing else would notice
-- while the worker lives. A claim that ran but whose reply was lost (a timeout, a reset) leaves tasks
-- running under a worker that never saw them; they go back to their queue now, not never. A cancellation
-- whose pub/sub message was lost (the subscription was down) is re-read here. The worker sends this only
-- while no claim of its own is in flight, and a worker's commands travel on one connection in order, so
-- every task it was handed is either in its list or handed by a claim Redis has not run yet.
local wid, mode, lease, ttl = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local n = tonumber(ARGV[6])
local held, held_ids = {}, {}
for i = 0, n - 1 do
  local id = ARGV[7 + 2 * i]
  held[id] = ARGV[8 + 2 * i]
  held_ids[#held_ids + 1] = id
end
local info_from = 7 + 2 * n
local now = observe_outage(KEYS[1], math.floor(lease / 3))

-- Whatever Redis has under this worker that the worker does not hold goes back to its queue.
local function reconcile()
  local given = 0
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[3])) do
    if not held[id] then
      local r = redis.call('HMGET', task_key(id), 'state', 'worker', 'queue', 'prio')
      if r[1] == 'running' and r[2] == wid then
        give_back(id, queue_of(r[3]), prio_of(r[4]))
        given = given + 1
      end
      redis.call('SREM', KEYS[3], id)
    end
  end
  return given
end

if mode == 'leave' then
  -- A worker leaves after its drain; anything still under it (an outcome that could not be recorded in
  -- time) is handed back rather than left for a lease that nobody will ever look at again.
  held = {}
  local given = reconcile()
  redis.call('ZREM', KEYS[1], wid)
  redis.call('DEL', KEYS[2], KEYS[3])
  return { 1, {}, {}, given }
end
if mode == 'renew' and not redis.call('ZSCORE', KEYS[1], wid) then return { 0, {}, {}, 0 } end
redis.call('ZADD', KEYS[1], now + lease, wid)
redis.call('HSET', KEYS[2], 'last_heartbeat', now)
if mode == 'register' then redis.call('HSET', KEYS[2], 'started', now) end
for i = info_from, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[2], ttl)

local given = reconcile()
local stop, cancel = {}, {}
for _, id in ipairs(held_ids) do
  local r = redis.call('HMGET', task_key(id), 'state', 'worker', 'fence', 'cancel')
  if r[1] ~= 'running' or r[2] ~= wid or r[3] ~= held[id] then
    stop[#stop + 1] = id
  elseif r[4] == '1' then
    cancel[#cancel + 1] = id
  end
end
return { 1, stop, cancel, given }
