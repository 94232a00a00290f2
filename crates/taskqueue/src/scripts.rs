//! The Lua scripts of the queue: one per state transition.
//!
//! Each script documents its `KEYS` and `ARGV` and why it must be atomic in its own file under `scripts/`.
//! Each also says, by its flags line, whether a full Redis refuses it or lets it run (see [`WhenFull`]).
//! A few helpers (`common.lua`) are prepended to each; scripts run with `EVALSHA` and are loaded again by
//! the client after a Redis restart (`NOSCRIPT`).

use fred::types::scripts::Script;

const COMMON: &str = include_str!("scripts/common.lua");

/// How a script behaves when Redis is out of memory (its `#!lua` flags line).
#[derive(Debug, Clone, Copy)]
enum WhenFull {
    /// Refused as a whole, before it runs (`-OOM`): the transitions that add work. A full Redis then sheds
    /// new submissions (UNAVAILABLE to the client, retried later) instead of growing past `maxmemory`.
    Refuse,
    /// Runs (`allow-oom`): the transitions that move or finish work already admitted, so that a full Redis
    /// keeps draining its queues, and finished records expire and free memory.
    Drain,
}

fn script(when_full: WhenFull, body: &str) -> Script {
    // A flags line makes Redis check memory once, before the script runs. Without one (a "legacy"
    // script), Redis 7 runs every write of the script even above `maxmemory`.
    let flags = match when_full {
        WhenFull::Refuse => "#!lua",
        WhenFull::Drain => "#!lua flags=allow-oom",
    };
    // The defaults records omit and the settings fall back to, defined once (in Rust) for Rust and Lua.
    let defaults = format!(
        "local DEFAULT_MAX_RETRIES = {}\nlocal DEFAULT_QUEUE = '{}'\nlocal DEFAULT_PRIORITY = '{}'\n\
         local DEFAULT_MAX_FINISHED = {}\nlocal DEFAULT_MAX_QUEUES = {}\nlocal INDEX_IDS_PER_ENTRY = {}\n",
        redline_catalog::DEFAULT_MAX_RETRIES,
        crate::DEFAULT_QUEUE,
        crate::DEFAULT_PRIORITY,
        crate::store::DEFAULT_MAX_FINISHED,
        crate::store::DEFAULT_MAX_QUEUES,
        crate::store::INDEX_IDS_PER_ENTRY,
    );
    Script::from_lua(format!("{flags}\n{defaults}{COMMON}\n{body}"))
}

/// All scripts, hashed once.
#[derive(Debug, Clone)]
pub struct Scripts {
    /// Enqueue a batch of tasks.
    pub submit: Script,
    /// A worker takes tasks (and recovers lost leases, promotes due tasks).
    pub claim: Script,
    /// Record a batch of attempt outcomes.
    pub complete: Script,
    /// Register, renew or unregister a worker.
    pub heartbeat: Script,
    /// Cancel a task.
    pub cancel: Script,
    /// Requeue a failed or cancelled task.
    pub retry: Script,
    /// Store progress of a running attempt.
    pub progress: Script,
    /// Delete old finished tasks.
    pub cleanup: Script,
}

impl Scripts {
    /// Hashes every script.
    pub fn new() -> Self {
        Self {
            submit: script(WhenFull::Refuse, include_str!("scripts/submit.lua")),
            claim: script(WhenFull::Drain, include_str!("scripts/claim.lua")),
            complete: script(WhenFull::Drain, include_str!("scripts/complete.lua")),
            heartbeat: script(WhenFull::Drain, include_str!("scripts/heartbeat.lua")),
            cancel: script(WhenFull::Drain, include_str!("scripts/cancel.lua")),
            retry: script(WhenFull::Refuse, include_str!("scripts/retry.lua")),
            progress: script(WhenFull::Drain, include_str!("scripts/progress.lua")),
            cleanup: script(WhenFull::Drain, include_str!("scripts/cleanup.lua")),
        }
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}
