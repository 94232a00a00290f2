-- heartbeat: register a worker, renew its lease, or unregister it.
--
-- KEYS[1] {ns}:workers  ZSET worker id -> lease expiry ms
-- KEYS[2] {ns}:w:<wid>  HASH worker info (ListWorkers)
-- ARGV[1] namespace, ARGV[2] worker id, ARGV[3] mode (register | renew | leave), ARGV[4] lease ms,
-- ARGV[5] info ttl s, ARGV[6..] info field/value pairs
-- Returns 1, or 0 when renewing a lease that was already declared lost (the worker must then abandon its
-- tasks — they were recovered and may run elsewhere — and register again).
--
-- Why a script: "is my lease still mine?" and "extend it" must be one step, or a reaper could recover the
-- worker's tasks between the check and the renewal and both would believe they own them.
local wid, mode, lease, ttl = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_ms()
if mode == 'leave' then
  redis.call('ZREM', KEYS[1], wid)
  redis.call('DEL', KEYS[2])
  return 1
end
if mode == 'renew' and not redis.call('ZSCORE', KEYS[1], wid) then return 0 end
redis.call('ZADD', KEYS[1], now + lease, wid)
redis.call('HSET', KEYS[2], 'last_heartbeat', now)
if mode == 'register' then redis.call('HSET', KEYS[2], 'started', now) end
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[2], ttl)
return 1
