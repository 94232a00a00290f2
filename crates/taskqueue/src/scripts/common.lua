-- Helpers prepended to every script (see scripts.rs). Kept tiny: each script must stay readable on its own.
--
-- Every key lives under the namespace prefix NS (ARGV[1]), which carries a Redis Cluster hash tag such as
-- "{redline}", so every key a script derives from a task or worker id is in the same slot as the keys it
-- declares in KEYS.
local NS = ARGV[1]
-- DEFAULT_MAX_RETRIES, DEFAULT_QUEUE, DEFAULT_PRIORITY, DEFAULT_MAX_FINISHED and DEFAULT_MAX_QUEUES are
-- defined above this file by scripts.rs, from the Rust constants of the same names: a record without
-- `max_retries`, `queue` or `prio` has those, and a namespace without settings those caps.

-- Redis's clock, so every host agrees. Scheduling (due times, leases, index scores) uses milliseconds;
-- the record's submitted/started/completed times are kept in microseconds for latency measurements.
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function now_ms() return math.floor(now_us() / 1000) end

local function task_key(id) return NS .. ':t:' .. id end
local function queue_key(q, p) return NS .. ':q:' .. q .. ':' .. p end
local function sched_key(q) return NS .. ':sched:' .. q end
local function stats_key(q) return NS .. ':stats:' .. q end
local function active_key(wid) return NS .. ':w:' .. wid .. ':active' end
local function worker_key(wid) return NS .. ':w:' .. wid end

-- A record omits its queue and priority when they are the defaults: a queued no-op task must stay small.
-- (HMGET answers false for an absent field.)
local function queue_of(q) return q or DEFAULT_QUEUE end
local function prio_of(p) return p or DEFAULT_PRIORITY end

-- A cap from {ns}:settings (written by TaskService), else its default.
local function limit(field, default)
  return tonumber(redis.call('HGET', NS .. ':settings', field)) or default
end

-- Retention of finished records, in seconds: what TaskService configured ({ns}:settings, written by every
-- replica at start and every few seconds), else the caller's defaults. The service that answers for results
-- decides how long they are kept, not each worker's own flags.
local function retention(result_ttl, dead_ttl)
  local s = redis.call('HMGET', NS .. ':settings', 'result_ttl', 'dead_letter_ttl')
  return tonumber(s[1]) or result_ttl, tonumber(s[2]) or dead_ttl
end

-- Tells watchers (WatchTask) that a task changed; they re-read the record. PUBLISH to a channel nobody
-- listens on costs one dictionary lookup, so this stays on the hot path.
local function task_event(id, what) redis.call('PUBLISH', NS .. ':ev:' .. id, what) end
-- Wakes workers blocked waiting for work on a queue.
local function wake(q) redis.call('PUBLISH', NS .. ':wake:' .. q, '1') end

-- Lease time runs only while Redis serves. Every script that renews or expires leases (claim, heartbeat)
-- calls this first, with a third of the caller's lease: when no such script ran for longer than that, Redis
-- was stalled, restarting or out of everyone's reach, and every lease is pushed back by the silence. So after
-- Redis comes back, workers get a fresh chance to renew before anything is recovered, and an outage never
-- counts toward a task's poison-pill limit; only a worker that misses its lease while Redis serves its peers
-- is presumed dead. (Live workers renew every 1/15 of their lease, so the silence is never that long while
-- any of them can reach Redis. When every worker was gone, the first one back waits one more lease before
-- it recovers the others' tasks.) Bounded: one key, and one ZADD per registered worker after an outage.
local function observe_outage(workers_key, silence_ms)
  local now = now_ms()
  local clock = NS .. ':clock'
  local last = tonumber(redis.call('GET', clock) or '')
  if last and now - last > silence_ms then
    local gap = now - last
    local leases = redis.call('ZRANGE', workers_key, 0, -1, 'WITHSCORES')
    for i = 1, #leases, 2 do
      redis.call('ZADD', workers_key, tonumber(leases[i + 1]) + gap, leases[i])
    end
    redis.call('HINCRBY', NS .. ':stats', 'outages', 1)
  end
  redis.call('SET', clock, now, 'PX', 86400000)
  return now
end

-- Puts a running task back at the front of its queue without counting the attempt or a recovery: its
-- worker handed it back (shutdown, leaving), never learnt it held it (a claim whose reply was lost), or
-- stopped it unfinished because it could not renew its lease (self-fencing). Nothing is spent from the
-- task's retry budget or poison-pill count.
local function give_back(id, q, prio)
  local key = task_key(id)
  redis.call('HSET', key, 'state', 'queued')
  redis.call('HINCRBY', key, 'attempt', -1)
  redis.call('HDEL', key, 'worker', 'started', 'progress')
  redis.call('RPUSH', queue_key(q, prio), id)
  redis.call('HINCRBY', stats_key(q), 'running', -1)
  task_event(id, 'queued')
  wake(q)
end

-- Every terminal task is in the done index ({ns}:done, by completion time); this keeps the index, and the
-- finished records with it, bounded by configuration rather than by manual cleanup. Entries older than the
-- longest retention are dropped (their records have expired), and past max_finished the oldest finished
-- records are deleted with their entries: memory for finished tasks is at most max_finished records.
-- At most 1,000 deletions per call, so a lowered cap is caught up over a few calls instead of one long
-- script that would stall Redis.
local function trim_finished(now, result_ttl, dead_ttl)
  local done = NS .. ':done'
  redis.call('ZREMRANGEBYSCORE', done, '-inf', now - math.max(result_ttl, dead_ttl) * 1000)
  local excess = redis.call('ZCARD', done) - limit('max_finished', DEFAULT_MAX_FINISHED)
  if excess > 0 then
    local oldest = redis.call('ZRANGE', done, 0, math.min(excess, 1000) - 1)
    for _, id in ipairs(oldest) do
      redis.call('DEL', task_key(id))
      redis.call('ZREM', NS .. ':dead', id)
    end
    redis.call('ZREM', done, unpack(oldest))
  end
end
