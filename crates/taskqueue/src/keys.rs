//! The Redis key layout of the task queue. Rust code builds every key here; the Lua scripts build the keys they
//! derive from ids they pop (`task_key`, `queue_key`, ... in `scripts/common.lua`) with the same layout, and a
//! test checks the two agree.
//!
//! All keys start with the namespace, which is a Redis Cluster hash tag (default `{redline}`): every key of
//! the queue hashes to one slot, so each Lua script may touch every key it needs, including the keys it derives
//! from task and worker ids (a task id is only known once popped). The price is that one deployment's queue
//! lives on one shard — the same as every Redis queue's "one queue = one core" limit. The scripts take the
//! prefix as an argument and derive every key from it, which is what lets the model spread over a cluster
//! by giving each queue its own tag (ARCHITECTURE.md, "Ready for more than one shard").
//!
//! | Key | Type | Contents |
//! |---|---|---|
//! | `{ns}:t:<id>` | HASH | task record (fields read by `TaskRecord::from_fields` in `model.rs`); terminal records carry a TTL |
//! | `{ns}:q:<queue>:<p>` | LIST | queued task ids of priority `p` (0–9): LPUSH new, RPOP next, RPUSH to the front |
//! | `{ns}:sched:<queue>` | ZSET | scheduled ids (eta or retry backoff), score = due epoch ms |
//! | `{ns}:queues` | SET | queue names ever used, at most `max_queues` |
//! | `{ns}:all` | STREAM | listing index: one entry per submit call and per [`INDEX_IDS_PER_ENTRY`](crate::INDEX_IDS_PER_ENTRY) of its tasks, field `ids` = their task ids; trimmed past the result TTL and 2 × `max_finished` ids |
//! | `{ns}:all:n` | STRING | how many ids `{ns}:all` holds, kept by the submit script that trims it |
//! | `{ns}:done` | ZSET | terminal task ids, score = completed epoch ms; past the longest TTL or `max_finished` entries the oldest go, with their records |
//! | `{ns}:dead` | ZSET | dead-letter index: failed ids, score = failed epoch ms, capped by count and age |
//! | `{ns}:idem:<key>` | STRING | idempotency key → task id, with a TTL |
//! | `{ns}:workers` | ZSET | live worker ids, score = lease expiry epoch ms |
//! | `{ns}:w:<wid>` | HASH | worker info for ListWorkers, with a TTL |
//! | `{ns}:w:<wid>:active` | SET | ids of the tasks a worker holds |
//! | `{ns}:stats:<queue>` | HASH | per-queue counters: running, succeeded, failed, cancelled, retried, recovered |
//! | `{ns}:stats` | HASH | global counters: stale_completions, lease_expiries, outages |
//! | `{ns}:types` | HASH | task type name → task spec JSON (schemas, defaults), published by workers |
//! | `{ns}:settings` | HASH | `result_ttl`, `dead_letter_ttl` (s), `max_finished`, `max_queues`, written by TaskService; the scripts apply them |
//! | `{ns}:clock` | STRING | Redis time (ms) of the last claim or heartbeat, to tell an outage from dead workers; 1 day TTL |
//!
//! Pub/sub channels: `{ns}:wake:<queue>` (work arrived), `{ns}:ev:<id>` (a task changed, for WatchTask),
//! `{ns}:ctl:<wid>` (cancel a running task on that worker).

/// Checks a queue name before it becomes part of keys and channels: 1–64 letters, digits, `_`, `-` or `.`
/// (no `:`, braces or spaces, which would change the key layout or its hash tag).
pub fn check_queue_name(q: &str) -> Result<(), String> {
    let ok = !q.is_empty()
        && q.len() <= 64
        && q.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err("must be 1-64 characters of letters, digits, '_', '-' or '.'".to_owned())
    }
}

/// Builds every key and channel name of one namespace.
#[derive(Debug, Clone)]
pub struct Keys {
    ns: String,
}

/// Number of priority levels; priorities are `0..PRIORITIES`.
pub const PRIORITIES: u8 = 10;

impl Keys {
    /// Keys under `namespace`. A namespace without a hash tag is wrapped in one (`redline` → `{redline}`).
    pub fn new(namespace: &str) -> Self {
        let ns = if namespace.contains('{') && namespace.contains('}') {
            namespace.to_owned()
        } else {
            format!("{{{namespace}}}")
        };
        Self { ns }
    }

    /// The namespace prefix, passed to every script as `ARGV[1]`.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// A task record.
    pub fn task(&self, id: &str) -> String {
        format!("{}:t:{id}", self.ns)
    }

    /// The list of queued ids of one priority.
    pub fn queue(&self, queue: &str, priority: u8) -> String {
        format!("{}:q:{queue}:{priority}", self.ns)
    }

    /// Scheduled ids of a queue.
    pub fn scheduled(&self, queue: &str) -> String {
        format!("{}:sched:{queue}", self.ns)
    }

    /// Known queue names.
    pub fn queues(&self) -> String {
        format!("{}:queues", self.ns)
    }

    /// The listing index: a stream of submitted ids, newest last.
    pub fn all(&self) -> String {
        format!("{}:all", self.ns)
    }

    /// How many ids the listing index holds.
    pub fn all_count(&self) -> String {
        format!("{}:all:n", self.ns)
    }

    /// Terminal tasks by completion time.
    pub fn done(&self) -> String {
        format!("{}:done", self.ns)
    }

    /// The dead-letter index.
    pub fn dead(&self) -> String {
        format!("{}:dead", self.ns)
    }

    /// An idempotency key.
    pub fn idempotency(&self, key: &str) -> String {
        format!("{}:idem:{key}", self.ns)
    }

    /// Live workers and their lease expiry.
    pub fn workers(&self) -> String {
        format!("{}:workers", self.ns)
    }

    /// A worker's info hash.
    pub fn worker(&self, worker_id: &str) -> String {
        format!("{}:w:{worker_id}", self.ns)
    }

    /// The ids a worker holds.
    pub fn worker_active(&self, worker_id: &str) -> String {
        format!("{}:w:{worker_id}:active", self.ns)
    }

    /// Per-queue counters.
    pub fn queue_stats(&self, queue: &str) -> String {
        format!("{}:stats:{queue}", self.ns)
    }

    /// Global counters.
    pub fn stats(&self) -> String {
        format!("{}:stats", self.ns)
    }

    /// Settings every process must apply alike, written by TaskService (retention of finished records).
    pub fn settings(&self) -> String {
        format!("{}:settings", self.ns)
    }

    /// Redis time of the last claim or heartbeat (see `observe_outage` in `scripts/common.lua`).
    pub fn clock(&self) -> String {
        format!("{}:clock", self.ns)
    }

    /// Task types published by workers.
    pub fn task_types(&self) -> String {
        format!("{}:types", self.ns)
    }

    /// Channel: work arrived on a queue.
    pub fn wake_channel(&self, queue: &str) -> String {
        format!("{}:wake:{queue}", self.ns)
    }

    /// Channel: a task changed.
    pub fn event_channel(&self, id: &str) -> String {
        format!("{}:ev:{id}", self.ns)
    }

    /// Prefix of event channels, to recover the task id from a message's channel.
    pub fn event_channel_prefix(&self) -> String {
        format!("{}:ev:", self.ns)
    }

    /// Channel: control messages (cancellations) for one worker.
    pub fn control_channel(&self, worker_id: &str) -> String {
        format!("{}:ctl:{worker_id}", self.ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_cannot_reshape_keys() {
        assert_eq!(check_queue_name("redline_tasks"), Ok(()));
        for bad in ["", "a:b", "{x}", "a b", &"q".repeat(65)] {
            assert!(check_queue_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn namespace_is_always_a_hash_tag() {
        assert_eq!(Keys::new("redline").task("x"), "{redline}:t:x");
        assert_eq!(Keys::new("{a}").queue("q", 5), "{a}:q:q:5");
        assert_eq!(Keys::new("app:{b}").workers(), "app:{b}:workers");
    }

    /// The Lua helpers that derive keys from ids build them as [`Keys`] does.
    #[test]
    fn the_scripts_build_keys_with_this_layout() {
        let lua = include_str!("scripts/common.lua");
        let k = Keys::new("{ns}");
        let cases = [
            ("NS .. ':t:' .. id", k.task("ID"), "{ns}:t:ID"),
            (
                "NS .. ':q:' .. q .. ':' .. p",
                k.queue("Q", 7),
                "{ns}:q:Q:7",
            ),
            ("NS .. ':sched:' .. q", k.scheduled("Q"), "{ns}:sched:Q"),
            ("NS .. ':stats:' .. q", k.queue_stats("Q"), "{ns}:stats:Q"),
            (
                "NS .. ':w:' .. wid .. ':active'",
                k.worker_active("W"),
                "{ns}:w:W:active",
            ),
            ("NS .. ':w:' .. wid", k.worker("W"), "{ns}:w:W"),
            ("NS .. ':ev:' .. id", k.event_channel("ID"), "{ns}:ev:ID"),
            ("NS .. ':wake:' .. q", k.wake_channel("Q"), "{ns}:wake:Q"),
            ("NS .. ':settings'", k.settings(), "{ns}:settings"),
            ("NS .. ':clock'", k.clock(), "{ns}:clock"),
        ];
        for (lua_expr, rust, expected) in cases {
            assert!(
                lua.contains(lua_expr),
                "common.lua no longer builds {lua_expr}"
            );
            assert_eq!(rust, expected);
        }
    }
}
