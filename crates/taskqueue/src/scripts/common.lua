-- Helpers prepended to every script (see scripts.rs). Kept tiny: each script must stay readable on its own.
--
-- Every key lives under the namespace prefix NS (ARGV[1]), which carries a Redis Cluster hash tag such as
-- "{redline}", so every key a script derives from a task or worker id is in the same slot as the keys it
-- declares in KEYS.
local NS = ARGV[1]
-- DEFAULT_MAX_RETRIES is defined above this file by scripts.rs, from the Rust constant of the same name: a
-- record without `max_retries` has that budget.

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
