//! The Lua scripts that read and write counters. They are the only code that touches counter keys.
//!
//! Why a script and not MULTI/EXEC or a pipeline: a decision must *read* every counter, decide, and only then
//! write, with no other client in between. A transaction cannot branch on what it read; a pipeline is not
//! isolated. One `EVALSHA` does the read-decide-write of every limit of a request in one round trip, and Redis
//! runs scripts one at a time, so concurrent clients can never over-admit.

/// Decides one batch of limits, all-or-nothing.
///
/// - `KEYS[i]`: counter of limit `i` (all share one hash tag, see [`super::keys`]).
/// - `ARGV[1]`: current time in µs, or an empty string to read Redis `TIME` (the default: one clock for every
///   instance; the argument exists for managed Redis that rejects `TIME` in scripts).
/// - `ARGV[2]`: `1` to consume when every enforced limit admits, `0` for a dry run.
/// - `ARGV[3 + 5(i-1) ..= 7 + 5(i-1)]`: algorithm (1 fixed window, 2 sliding window, 3 GCRA), limit, window in
///   ms, cost, shadow (`1` or `0`) of limit `i`.
///
/// Returns `{allowed, now_ms, then per limit: allowed, remaining, reset_after_ms, retry_after_ms}`.
///
/// Layouts: fixed window is a hash `{c = count, e = window end ms}`; sliding window a hash `{w = window id,
/// c = count in w, p = count in w-1}`; GCRA a string holding the theoretical arrival time in µs. Every key gets
/// a TTL so abandoned counters disappear; correctness never depends on the TTL (ends and ids are stored), so
/// an early or late expiry after a Redis restart cannot lock a client out. The TTL is one second longer than
/// the state matters: in client-time mode an instance whose clock lags Redis's still finds the counter.
///
/// Arithmetic mirrors [`super::model::evaluate`] step by step. Numbers stay below 2^53 (limits ≤ 1e9, windows
/// ≤ 10 years), so Lua doubles are exact; integers written back go through `%.0f` because Lua's default
/// number formatting (`%.14g`) would round microsecond timestamps.
pub const DECIDE: &str = r#"
local now_us
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now_us = tonumber(ARGV[1])
end
local now_ms = math.floor(now_us / 1000)
local consume = ARGV[2] == '1'
local n = #KEYS
local verdicts = {}
local writes = {}
local all_ok = true

for i = 1, n do
  local b = 2 + (i - 1) * 5
  local alg = tonumber(ARGV[b + 1])
  local limit = tonumber(ARGV[b + 2])
  local window = tonumber(ARGV[b + 3])
  local cost = tonumber(ARGV[b + 4])
  local shadow = ARGV[b + 5] == '1'
  local key = KEYS[i]
  local ok, used, remaining, reset, retry

  if alg == 1 then
    local v = redis.call('HMGET', key, 'c', 'e')
    local count = tonumber(v[1]) or 0
    local ends = tonumber(v[2]) or 0
    if ends == 0 or now_ms >= ends then
      count = 0
      ends = now_ms + window
    end
    ok = count + cost <= limit
    if ok then used = count + cost else used = count end
    local left = ends - now_ms
    remaining = math.max(limit - used, 0)
    if used == 0 then reset = 0 else reset = left end
    if ok then retry = 0 else retry = left end
    writes[i] = {'HSET', key, 'c', string.format('%.0f', count + cost), 'e', string.format('%.0f', ends), left}
  elseif alg == 2 then
    local id = math.floor(now_ms / window)
    local elapsed = now_ms - id * window
    local v = redis.call('HMGET', key, 'w', 'c', 'p')
    local wid = tonumber(v[1])
    local current, previous = 0, 0
    if wid == id then
      current = tonumber(v[2]) or 0
      previous = tonumber(v[3]) or 0
    elseif wid ~= nil and wid + 1 == id then
      previous = tonumber(v[2]) or 0
    end
    local estimate = math.floor(previous * (window - elapsed) / window) + current
    ok = estimate + cost <= limit
    if ok then used = estimate + cost else used = estimate end
    remaining = math.max(limit - used, 0)
    local current_after = current
    if ok then current_after = current + cost end
    if current_after > 0 then
      reset = 2 * window - elapsed
    elseif previous > 0 then
      reset = window - elapsed
    else
      reset = 0
    end
    if ok then
      retry = 0
    else
      local room = limit - cost - current
      if cost > limit then
        retry = 2 * window - elapsed
      elseif room >= 0 then
        retry = math.max(math.ceil((window - elapsed) - room * window / previous), 1)
      else
        local later = math.ceil(window - (limit - cost) * window / math.max(current, 1))
        retry = (window - elapsed) + math.max(later, 0)
      end
    end
    writes[i] = {'HSET', key, 'w', string.format('%.0f', id), 'c', string.format('%.0f', current + cost),
      'p', string.format('%.0f', previous), 2 * window - elapsed}
  else
    local interval = math.ceil(window * 1000 / math.max(limit, 1))
    local capacity = limit * interval
    local tat = tonumber(redis.call('GET', key)) or now_us
    if tat < now_us then tat = now_us end
    local new_tat = tat + cost * interval
    ok = new_tat - now_us <= capacity
    local backlog
    if ok then backlog = new_tat - now_us else backlog = tat - now_us end
    remaining = math.floor(math.max(capacity - backlog, 0) / interval)
    reset = math.ceil(backlog / 1000)
    if ok then retry = 0 else retry = math.ceil((new_tat - now_us - capacity) / 1000) end
    writes[i] = {'SET', key, string.format('%.0f', new_tat), math.ceil((new_tat - now_us) / 1000) + 1}
  end

  if not ok and not shadow then all_ok = false end
  verdicts[i] = {ok, remaining, reset, retry, cost, limit}
end

local out = {all_ok and 1 or 0, now_ms}
for i = 1, n do
  local v = verdicts[i]
  local ok, remaining, cost, limit = v[1], v[2], v[5], v[6]
  if consume and all_ok and ok and cost > 0 then
    local w = writes[i]
    local ttl = w[#w]
    w[#w] = nil
    redis.call(unpack(w))
    redis.call('PEXPIRE', w[2], ttl + 1000)
  elseif (not all_ok) and ok then
    -- Another limit refused, so this one consumed nothing.
    remaining = math.min(remaining + cost, limit)
  end
  out[#out + 1] = ok and 1 or 0
  out[#out + 1] = remaining
  out[#out + 1] = v[3]
  out[#out + 1] = v[4]
end
return out
"#;

/// Minimal `INCR` + `PEXPIRE`-on-first fixed window, the reference the benchmark compares against.
///
/// - `KEYS[1]`: counter; `ARGV[1]`: window in ms.
pub const BENCH_REFERENCE: &str = r#"
local c = redis.call('INCR', KEYS[1])
if c == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return c
"#;
