-- cleanup: delete up to N finished tasks that ended more than an age ago (CleanupTasks).
--
-- KEYS[1] {ns}:done, KEYS[2] {ns}:dead
-- ARGV[1] namespace, ARGV[2] age in ms, ARGV[3] batch size
-- Returns the number of tasks deleted; the caller repeats while a full batch was deleted.
--
-- Why a script: the record and its index entries go together, so listings never show half-deleted tasks.
-- The listing stream is not touched: it skips ids whose record is gone, and ages out by itself.
-- Batches keep each call short: a script blocks Redis while it runs. The cutoff is taken on Redis's clock, the
-- clock completion times were recorded with, so a caller's skewed clock cannot delete young tasks.
local cutoff = now_ms() - tonumber(ARGV[2])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff, 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  redis.call('DEL', task_key(id))
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end
return #ids
