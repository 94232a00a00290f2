//! Domain types of the queue: task states, records, submissions, claims and outcomes.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use redline_catalog::{DEFAULT_MAX_RETRIES, DEFAULT_TIME_LIMIT};

/// The lifecycle of a task.
///
/// ```text
///  submit ──► queued ◄──────────── scheduled ◄── submit with eta/countdown
///               │   ▲ lease lost,     ▲  │
///         claim │   │ shutdown        │  │ cancel
///               ▼   │                 │  ▼
///             running ── retryable error (budget left) ─┘   cancelled
///               │  │ └─ cancel ──────────────────────────► cancelled
///               │  └─── error, budget spent ─────────────► failed (dead letter) ── RetryTask ──► queued
///               └────── ok ──────────────────────────────► succeeded
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskState {
    /// Waiting in its queue.
    Queued,
    /// Waiting for an eta or a retry backoff.
    Scheduled,
    /// Held by a worker under a lease.
    Running,
    /// Ended with a result.
    Succeeded,
    /// Ended with an error, retries spent; kept in the dead-letter index.
    Failed,
    /// Cancelled before or while running.
    Cancelled,
}

impl TaskState {
    /// Every state, in lifecycle order.
    pub const ALL: [TaskState; 6] = [
        Self::Queued,
        Self::Scheduled,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The name stored in Redis.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Scheduled => "scheduled",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses a stored state name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// True once the task has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// Priority of a task that does not ask for one (Celery's and REDLINE's 5, the middle of 0–9).
pub const DEFAULT_PRIORITY: u8 = 5;

/// A fresh task id: 16 characters of `[0-9A-Za-z]` from a random UUID (95 random bits; a collision among
/// a billion ids has odds of about 1 in 10^11).
///
/// Why not the UUID's own 36-character text: an id is stored three times per queued task (its record's key,
/// its queue entry and the listing index), and those 20 characters were most of the difference between this
/// queue's memory per task and BullMQ's integer ids. Ids stay opaque strings, as Celery's are; a client may
/// still choose its own.
pub fn new_task_id() -> String {
    const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut n = uuid::Uuid::new_v4().as_u128();
    (0..16)
        .map(|_| {
            let d = DIGITS[(n % 62) as usize] as char;
            n /= 62;
            d
        })
        .collect()
}

/// A task to enqueue. Build it with [`NewTask::new`] and adjust the public fields.
#[derive(Debug, Clone)]
pub struct NewTask {
    /// Task id ([`new_task_id`] unless the caller chose one).
    pub id: String,
    /// Canonical task type name.
    pub name: String,
    /// Positional arguments (a JSON array).
    pub args: Value,
    /// Keyword arguments (a JSON object).
    pub kwargs: Value,
    /// Queue name.
    pub queue: String,
    /// 0 (lowest) to 9 (most urgent).
    pub priority: u8,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Hard time limit of one attempt.
    pub time_limit: Duration,
    /// Run no earlier than this long after submission.
    pub countdown: Option<Duration>,
    /// Run no earlier than this epoch time in ms.
    pub eta_ms: Option<u64>,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// W3C trace context of the submitter.
    pub traceparent: Option<String>,
}

impl NewTask {
    /// A task with a fresh id, empty arguments and the given queue defaults.
    pub fn new(name: impl Into<String>, queue: impl Into<String>) -> Self {
        Self {
            id: new_task_id(),
            name: name.into(),
            args: Value::Array(Vec::new()),
            kwargs: Value::Object(serde_json::Map::new()),
            queue: queue.into(),
            priority: DEFAULT_PRIORITY,
            max_retries: DEFAULT_MAX_RETRIES,
            time_limit: DEFAULT_TIME_LIMIT,
            countdown: None,
            eta_ms: None,
            idempotency_key: None,
            traceparent: None,
        }
    }
}

/// What a submit did for one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// The task id (the original one when `duplicate`).
    pub id: String,
    /// State right after submission.
    pub state: TaskState,
    /// The idempotency key matched an earlier task.
    pub duplicate: bool,
}

/// A task record as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    /// Task id.
    pub id: String,
    /// Task type name.
    pub name: String,
    /// Positional arguments.
    pub args: Value,
    /// Keyword arguments.
    pub kwargs: Value,
    /// Queue name.
    pub queue: String,
    /// Priority 0–9.
    pub priority: u8,
    /// Current state.
    pub state: TaskState,
    /// Attempts started.
    pub attempt: u32,
    /// Failed attempts that were retried.
    pub retries: u32,
    /// Retry budget.
    pub max_retries: u32,
    /// Hard time limit of one attempt.
    pub time_limit: Duration,
    /// Due time while scheduled, epoch ms.
    pub eta_ms: Option<u64>,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// Submission time, epoch µs (Redis clock).
    pub submitted_us: u64,
    /// Start of the current or last attempt, epoch µs.
    pub started_us: Option<u64>,
    /// End time, epoch µs.
    pub completed_us: Option<u64>,
    /// Last progress report (`{step, progress, ...}`).
    pub progress: Option<Value>,
    /// Result of a succeeded task.
    pub result: Option<Value>,
    /// Error of the last failed attempt, or of the failed task.
    pub error: Option<String>,
    /// Worker holding the task.
    pub worker_id: Option<String>,
    /// W3C trace context of the submitter.
    pub traceparent: Option<String>,
    /// Cancellation of the running attempt was requested.
    pub cancel_requested: bool,
    /// Times the task was recovered from a lost worker.
    pub recoveries: u32,
}

impl TaskRecord {
    /// Builds a record from the fields of its hash. `None` when the hash is empty (no such task) or lacks a
    /// valid state.
    pub fn from_fields(id: &str, f: &HashMap<String, String>) -> Option<Self> {
        let state = TaskState::parse(f.get("state")?)?;
        let num = |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok());
        let json = |k: &str| f.get(k).and_then(|v| serde_json::from_str::<Value>(v).ok());
        let text = |k: &str| f.get(k).filter(|v| !v.is_empty()).cloned();
        Some(Self {
            id: id.to_owned(),
            name: f.get("name").cloned().unwrap_or_default(),
            args: json("args").unwrap_or_else(|| Value::Array(Vec::new())),
            kwargs: json("kwargs").unwrap_or_else(|| Value::Object(serde_json::Map::new())),
            // A record omits its queue and priority when they are the defaults.
            queue: f
                .get("queue")
                .cloned()
                .unwrap_or_else(|| crate::DEFAULT_QUEUE.to_owned()),
            priority: num("prio").map_or(DEFAULT_PRIORITY, |p| p.min(9) as u8),
            state,
            attempt: num("attempt").unwrap_or(0) as u32,
            retries: num("retries").unwrap_or(0) as u32,
            max_retries: num("max_retries").map_or(DEFAULT_MAX_RETRIES, |n| n as u32),
            time_limit: num("limit").map_or(DEFAULT_TIME_LIMIT, Duration::from_millis),
            eta_ms: num("eta"),
            idempotency_key: text("idem"),
            submitted_us: num("submitted").unwrap_or(0),
            started_us: num("started"),
            completed_us: num("completed"),
            progress: json("progress"),
            result: json("result"),
            error: text("error"),
            worker_id: text("worker"),
            traceparent: text("trace"),
            cancel_requested: f.get("cancel").is_some_and(|v| v == "1"),
            recoveries: num("recoveries").unwrap_or(0) as u32,
        })
    }
}

/// A task a worker claimed: everything needed to run one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedTask {
    /// Task id.
    pub id: String,
    /// Fencing token of this attempt: completions must present it.
    pub fence: u64,
    /// Task type name.
    pub name: String,
    /// Positional arguments.
    pub args: Value,
    /// Keyword arguments.
    pub kwargs: Value,
    /// This attempt's number (1 for the first run).
    pub attempt: u32,
    /// Failed attempts retried so far.
    pub retries: u32,
    /// Retry budget.
    pub max_retries: u32,
    /// Hard time limit of this attempt.
    pub time_limit: Duration,
    /// W3C trace context of the submitter.
    pub traceparent: Option<String>,
    /// Queue it came from.
    pub queue: String,
    /// Submission time, epoch µs.
    pub submitted_us: u64,
}

/// The result of one claim call.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Tasks taken (possibly none) and when to look again if idle.
    Tasks {
        /// The claimed tasks.
        tasks: Vec<ClaimedTask>,
        /// Time until the next scheduled task or lease expiry, if any.
        next_wake: Option<Duration>,
    },
    /// This worker's lease had expired: its tasks were recovered. It must register again.
    LeaseLost,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Success with a JSON result.
    Succeeded(Value),
    /// A retryable error: retry after `delay` if the budget allows, else fail.
    Retry {
        /// Error message.
        error: String,
        /// Backoff before the next attempt.
        delay: Duration,
    },
    /// A non-retryable error.
    Failed(String),
    /// Ended because cancellation was requested.
    Cancelled(String),
    /// Not finished because the worker is shutting down; put back without using an attempt.
    Requeue,
}

/// One attempt's outcome, fenced.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// Task id.
    pub id: String,
    /// Fence of the attempt.
    pub fence: u64,
    /// What happened.
    pub outcome: Outcome,
}

/// What the store did with a completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completed {
    /// Applied; the task is now in this state.
    Applied(TaskState),
    /// Rejected: the attempt's lease was lost and a newer attempt owns the task.
    Stale,
}

/// Outcome of a cancel request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Removed from its queue or schedule: cancelled.
    Cancelled,
    /// Running: its worker was asked to stop.
    Requested,
    /// Already ended, in this state.
    AlreadyEnded(TaskState),
    /// No such task.
    NotFound,
}

/// Outcome of a retry request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOutcome {
    /// Back in its queue.
    Requeued,
    /// Not failed or cancelled: this is its state.
    NotRetryable(TaskState),
    /// No such task.
    NotFound,
}

/// Counts of one queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Queue name.
    pub queue: String,
    /// Waiting for a worker.
    pub queued: u64,
    /// Waiting for an eta or backoff.
    pub scheduled: u64,
    /// Held by workers.
    pub running: u64,
    /// Ended with a result (since the counters began).
    pub succeeded: u64,
    /// Failed for good.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
    /// Retries scheduled.
    pub retried: u64,
    /// Recoveries after a lost lease.
    pub recovered: u64,
    /// Age of the oldest queued task.
    pub oldest_queued_age: Option<Duration>,
}

/// Totals over the whole namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Per queue.
    pub queues: Vec<QueueCounts>,
    /// Live workers.
    pub workers: u64,
    /// Tasks in the dead-letter index.
    pub dead_letter: u64,
    /// Completions rejected by fencing.
    pub stale_completions: u64,
    /// Worker leases that expired.
    pub lease_expiries: u64,
}

/// A live worker as seen in Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerInfo {
    /// Worker id.
    pub id: String,
    /// Host name.
    pub hostname: String,
    /// Consumed queues.
    pub queues: Vec<String>,
    /// Tasks it runs at once.
    pub concurrency: u32,
    /// Ids of tasks it holds.
    pub active: Vec<String>,
    /// Start time, epoch ms.
    pub started_ms: u64,
    /// Last heartbeat, epoch ms.
    pub last_heartbeat_ms: u64,
    /// Attempts finished.
    pub processed: u64,
    /// Attempts that failed.
    pub failed: u64,
    /// Process id.
    pub pid: u32,
    /// Software version.
    pub version: String,
}
