//! The Lua scripts of the queue: one per state transition.
//!
//! Each script documents its `KEYS` and `ARGV` and why it must be atomic in its own file under `scripts/`.
//! A few helpers (`common.lua`) are prepended to each; scripts run with `EVALSHA` and are loaded again by
//! the client after a Redis restart (`NOSCRIPT`).

use fred::types::scripts::Script;

const COMMON: &str = include_str!("scripts/common.lua");

fn script(body: &str) -> Script {
    // The defaults records omit, defined once (in the model) for Rust and Lua alike.
    let defaults = format!(
        "local DEFAULT_MAX_RETRIES = {}\n",
        redline_catalog::DEFAULT_MAX_RETRIES
    );
    Script::from_lua(format!("{defaults}{COMMON}\n{body}"))
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
            submit: script(include_str!("scripts/submit.lua")),
            claim: script(include_str!("scripts/claim.lua")),
            complete: script(include_str!("scripts/complete.lua")),
            heartbeat: script(include_str!("scripts/heartbeat.lua")),
            cancel: script(include_str!("scripts/cancel.lua")),
            retry: script(include_str!("scripts/retry.lua")),
            progress: script(include_str!("scripts/progress.lua")),
            cleanup: script(include_str!("scripts/cleanup.lua")),
        }
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}
