//! The Lua scripts that read and write counters. They are the only code that touches counter keys.
//!
//! Why a script and not MULTI/EXEC or a pipeline: a decision must *read* every counter, decide, and only then
//! write, with no other client in between. A transaction cannot branch on what it read; a pipeline is not
//! isolated. One `EVALSHA` does the read-decide-write of every limit of a request in one round trip, and Redis
//! runs scripts one at a time, so concurrent clients can never over-admit.

/// Decides several requests in one call, each all-or-nothing over its own limits.
///
/// Why several per call: Redis spends most of an `EVALSHA` on the call itself (reading and parsing the
/// command, starting the script, writing the reply), not on the few counter commands a decision makes. The
/// service coalesces the decisions that arrive while a call is in flight into the next call (see
/// [`super::redis`]), so under load Redis runs one script per batch of decisions instead of one per decision.
/// Each decision is still read-decide-write with no other client in between, so batching changes neither
/// isolation nor results; decisions of one call see each other's writes in order, as they would in
/// consecutive calls.
///
/// - `ARGV[1]`: current time in µs, or an empty string to read Redis `TIME` (the default: one clock for every
///   instance; the argument exists for managed Redis that rejects `TIME` in scripts). One time serves every
///   decision of the call.
/// - `ARGV[2]`: number of decisions. Then, decision after decision: `1` to consume when the decision admits or
///   `0` for a dry run; the number of limits `n`; and five arguments per limit: algorithm (1 fixed window,
///   2 sliding window, 3 GCRA), limit, window in ms, cost, mode (0 enforced, 1 shadow, 2 quota).
/// - `KEYS`: the counters of every limit, decision after decision (one hash tag per decision, see
///   [`super::keys`]; on a cluster, every key of a call is in one slot).
///
/// Returns, decision after decision: `allowed` (1, 0, or -1 when a counter key holds a foreign type: that
/// decision consumed nothing and the others are unaffected), then per limit `allowed, remaining,
/// reset_after_ms, retry_after_ms`.
///
/// A decision admits when every enforced limit admits and, if it has quota-mode limits, at least one of them
/// admits (envoyproxy/ratelimit's soft quota: refused only when every quota is spent). Shadow limits never
/// refuse. Limits that admit consume their cost when the decision admits; a limit that refuses consumes
/// nothing.
///
/// Layouts: fixed window is a hash `{c = count, e = window end ms}`; sliding window a hash `{w = window id,
/// c = count in w, p = count in w-1}`; GCRA a string holding the theoretical arrival time in µs. Every key gets
/// a TTL so abandoned counters disappear; correctness never depends on the TTL (ends and ids are stored), so
/// an early or late expiry after a Redis restart cannot lock a client out. The TTL is one second longer than
/// the state matters: in client-time mode an instance whose clock lags Redis's still finds the counter.
///
/// Shaped for Redis's cost model, where each `redis.call` costs more than the command it runs (the call
/// converts arguments and replies between Lua and RESP): a decision makes two calls per limit, one read and
/// one write. A window's expiry point does not move while the window lasts, so fixed and sliding windows set
/// their TTL only when a window starts; GCRA writes value and TTL in one `SET … PX`. Per-limit results live
/// in scratch tables reused across decisions rather than in tables allocated per limit. Reads go through
/// `redis.pcall` so that a foreign key fails only its own decision: a script that raised half-way would
/// leave the decisions before it applied but reported as failed.
///
/// Arithmetic mirrors [`super::model::evaluate`] step by step. Numbers stay below 2^53 (limits ≤ 1e9, windows
/// ≤ 10 years), so Lua doubles are exact; integers written back go through `%.0f` because Lua's default
/// number formatting (`%.14g`) would round microsecond timestamps.
pub const DECIDE: &str = r#"
local floor, ceil, max, min, fmt = math.floor, math.ceil, math.max, math.min, string.format
local call, pcall, tonumber = redis.call, redis.pcall, tonumber
local now_us
if ARGV[1] == '' then
  local t = call('TIME')
  now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now_us = tonumber(ARGV[1])
end
local now_ms = floor(now_us / 1000)

-- Scratch per limit of the decision being made, reused across decisions: ok, remaining, reset, retry, and
-- what the consuming write needs. A, B, C are: fixed window: count after, window end, window starts now;
-- sliding window: current count after, previous count, window starts now; GCRA: TAT after, TTL in ms.
local OK, REM, RST, RTY, A, B, C = {}, {}, {}, {}, {}, {}, {}

local out, o = {}, 0
local a, k = 3, 1
for _ = 1, tonumber(ARGV[2]) do
  local consume = ARGV[a] == '1'
  local n = tonumber(ARGV[a + 1])
  a = a + 2
  local enforced_ok, quotas, quotas_ok, foreign = true, 0, 0, false
  for i = 1, n do
    local b = a + (i - 1) * 5
    local alg, limit, window, cost = ARGV[b], tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
    local key = KEYS[k + i - 1]
    local ok, used, remaining, reset, retry
    if alg == '1' then
      local v = pcall('HMGET', key, 'c', 'e')
      if v.err then foreign = true break end
      local count = tonumber(v[1]) or 0
      local ends = tonumber(v[2]) or 0
      local fresh = ends == 0 or now_ms >= ends
      if fresh then
        count = 0
        ends = now_ms + window
      end
      ok = count + cost <= limit
      if ok then used = count + cost else used = count end
      local left = ends - now_ms
      remaining = max(limit - used, 0)
      if used == 0 then reset = 0 else reset = left end
      if ok then retry = 0 else retry = left end
      A[i], B[i], C[i] = count + cost, ends, fresh
    elseif alg == '2' then
      local id = floor(now_ms / window)
      local elapsed = now_ms - id * window
      local v = pcall('HMGET', key, 'w', 'c', 'p')
      if v.err then foreign = true break end
      local wid = tonumber(v[1])
      local current, previous = 0, 0
      if wid == id then
        current = tonumber(v[2]) or 0
        previous = tonumber(v[3]) or 0
      elseif wid ~= nil and wid + 1 == id then
        previous = tonumber(v[2]) or 0
      end
      local estimate = floor(previous * (window - elapsed) / window) + current
      ok = estimate + cost <= limit
      if ok then used = estimate + cost else used = estimate end
      remaining = max(limit - used, 0)
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
          retry = max(ceil((window - elapsed) - room * window / previous), 1)
        else
          local later = ceil(window - (limit - cost) * window / max(current, 1))
          retry = (window - elapsed) + max(later, 0)
        end
      end
      A[i], B[i], C[i] = current + cost, previous, wid ~= id
    else
      local interval = ceil(window * 1000 / max(limit, 1))
      local capacity = limit * interval
      local v = pcall('GET', key)
      if type(v) == 'table' and v.err then foreign = true break end
      local tat = tonumber(v) or now_us
      if tat < now_us then tat = now_us end
      local new_tat = tat + cost * interval
      ok = new_tat - now_us <= capacity
      local backlog
      if ok then backlog = new_tat - now_us else backlog = tat - now_us end
      remaining = floor(max(capacity - backlog, 0) / interval)
      reset = ceil(backlog / 1000)
      if ok then retry = 0 else retry = ceil((new_tat - now_us - capacity) / 1000) end
      A[i], B[i] = new_tat, ceil((new_tat - now_us) / 1000) + 1
    end
    local mode = ARGV[b + 4]
    if mode == '2' then
      quotas = quotas + 1
      if ok then quotas_ok = quotas_ok + 1 end
    elseif mode ~= '1' and not ok then
      enforced_ok = false
    end
    OK[i], REM[i], RST[i], RTY[i] = ok, remaining, reset, retry
  end
  if foreign then
    o = o + 1
    out[o] = -1
    for _ = 1, 4 * n do
      o = o + 1
      out[o] = 0
    end
  else
    local all_ok = enforced_ok and (quotas == 0 or quotas_ok > 0)
    o = o + 1
    out[o] = all_ok and 1 or 0
    for i = 1, n do
      local b = a + (i - 1) * 5
      local ok, remaining, cost = OK[i], REM[i], tonumber(ARGV[b + 3])
      if consume and all_ok and ok and cost > 0 then
        local key, alg, window = KEYS[k + i - 1], ARGV[b], tonumber(ARGV[b + 2])
        if alg == '1' then
          call('HSET', key, 'c', fmt('%.0f', A[i]), 'e', fmt('%.0f', B[i]))
          if C[i] then call('PEXPIRE', key, fmt('%.0f', B[i] - now_ms + 1000)) end
        elseif alg == '2' then
          call('HSET', key, 'w', fmt('%.0f', floor(now_ms / window)), 'c', fmt('%.0f', A[i]), 'p', fmt('%.0f', B[i]))
          if C[i] then call('PEXPIRE', key, fmt('%.0f', 2 * window - (now_ms - floor(now_ms / window) * window) + 1000)) end
        else
          call('SET', key, fmt('%.0f', A[i]), 'PX', fmt('%.0f', B[i] + 1000))
        end
      elseif (not all_ok) and ok then
        -- The decision was refused, so this limit consumed nothing.
        remaining = min(remaining + cost, tonumber(ARGV[b + 1]))
      end
      out[o + 1] = ok and 1 or 0
      out[o + 2] = remaining
      out[o + 3] = RST[i]
      out[o + 4] = RTY[i]
      o = o + 4
    end
  end
  a = a + 5 * n
  k = k + n
end
return out
"#;
