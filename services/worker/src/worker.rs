//! The worker runtime: a fetch loop, one Tokio task per running attempt, a completion batcher and a
//! heartbeat, all stopped by one [`CancellationToken`].
//!
//! ```text
//!  wake-ups (pub/sub) ─┐                        ┌──► attempt ─┐
//!  eta / lease timers ─┼─► fetch: claim(free) ──┼──► attempt ─┼─► completions ─► batcher: complete(batch)
//!  free slots ─────────┘                        └──► attempt ─┘
//!  heartbeat: renew lease, housekeeping ── lease lost? ──► abandon attempts, register again
//!  control (pub/sub): cancel <id> ──► that attempt's token
//! ```
//!
//! Claims and completions are batched: a worker with many free slots takes many tasks in one script call,
//! and finished attempts are recorded together. That is what lets two worker processes drain tens of
//! thousands of short tasks per second from one Redis.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use redline_taskqueue::backoff::Backoff;
use redline_taskqueue::{
    Claim, ClaimedTask, Completed, Completion, HeartbeatMode, Outcome, TaskState, TaskStore,
};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::registry::{Registry, TaskContext, TaskError};

/// How one worker process behaves.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Unique id of this process.
    pub worker_id: String,
    /// Host name shown by ListWorkers.
    pub hostname: String,
    /// Queues to consume, in preference order.
    pub queues: Vec<String>,
    /// Attempts run at once.
    pub concurrency: usize,
    /// On shutdown, how long running attempts may take to finish before they are requeued.
    pub shutdown_grace: Duration,
    /// How long a cancelled or timed-out handler may take to stop before it is aborted.
    pub cancel_grace: Duration,
    /// Retry delays.
    pub backoff: Backoff,
    /// Most tasks taken in one claim.
    pub max_batch: usize,
    /// Set while the worker heartbeats successfully and is not draining (the admin port's `/readyz`).
    pub readiness: redline_runtime::admin::Readiness,
}

impl WorkerSettings {
    /// Settings with defaults for everything but the identity.
    pub fn new(worker_id: impl Into<String>, queues: Vec<String>, concurrency: usize) -> Self {
        Self {
            worker_id: worker_id.into(),
            hostname: hostname(),
            queues,
            concurrency: concurrency.max(1),
            shutdown_grace: Duration::from_secs(30),
            cancel_grace: Duration::from_secs(5),
            backoff: Backoff::default(),
            max_batch: 128,
            readiness: redline_runtime::admin::Readiness::default(),
        }
    }
}

/// This machine's host name (`HOSTNAME`, else `/etc/hostname`, else `localhost`).
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Why an attempt is being stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    Cancelled,
    TimedOut,
    Shutdown,
    LeaseLost,
}

struct Running {
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
}

impl Running {
    fn stop(&self, reason: StopReason) {
        let mut r = self.reason.lock().unwrap_or_else(PoisonError::into_inner);
        r.get_or_insert(reason);
        drop(r);
        self.cancel.cancel();
    }
}

/// What a worker did, reported when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Attempts whose outcome was recorded.
    pub processed: u64,
    /// Attempts that failed (retried or not).
    pub failed: u64,
    /// Attempts put back in the queue at shutdown.
    pub requeued: u64,
}

struct Shared {
    store: TaskStore,
    registry: Registry,
    settings: WorkerSettings,
    running: Mutex<HashMap<String, Running>>,
    processed: AtomicU64,
    failed: AtomicU64,
    requeued: AtomicU64,
    wake: Notify,
    completions: mpsc::UnboundedSender<Finished>,
}

/// An attempt's outcome on its way to Redis, with what its metrics are labelled by.
struct Finished {
    completion: Completion,
    task_name: String,
    queue: String,
}

impl Shared {
    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stop_all(&self, reason: StopReason) {
        for r in self.running().values() {
            r.stop(reason);
        }
    }

    fn info(&self) -> Vec<(&'static str, String)> {
        vec![
            ("hostname", self.settings.hostname.clone()),
            ("queues", self.settings.queues.join(",")),
            ("concurrency", self.settings.concurrency.to_string()),
            ("active", self.running().len().to_string()),
            (
                "processed",
                self.processed.load(Ordering::Relaxed).to_string(),
            ),
            ("failed", self.failed.load(Ordering::Relaxed).to_string()),
            ("pid", std::process::id().to_string()),
            ("version", env!("CARGO_PKG_VERSION").to_owned()),
        ]
    }
}

/// Runs a worker until `shutdown` is cancelled, then drains: running attempts get `shutdown_grace` to finish,
/// the rest are requeued without using an attempt, outcomes are flushed and the worker leaves.
pub async fn run(
    store: TaskStore,
    subscriber: SubscriberClient,
    registry: Registry,
    settings: WorkerSettings,
    shutdown: CancellationToken,
) -> WorkerReport {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        store,
        registry,
        settings,
        running: Mutex::new(HashMap::new()),
        processed: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        requeued: AtomicU64::new(0),
        wake: Notify::new(),
        completions: tx,
    });
    let id = shared.settings.worker_id.clone();

    // Subscribe before the first claim, so no wake-up published after it can be missed.
    let mut channels: Vec<String> = shared
        .settings
        .queues
        .iter()
        .map(|q| shared.store.keys().wake_channel(q))
        .collect();
    let control = shared.store.keys().control_channel(&id);
    channels.push(control.clone());
    let messages = subscriber.message_rx();
    if let Err(e) = subscriber.subscribe(channels).await {
        tracing::warn!(error = %e, "subscribing to wake-ups failed; idle workers will poll every second until Redis is back");
    }
    let background = CancellationToken::new();
    tokio::spawn(listen(
        Arc::clone(&shared),
        messages,
        control,
        background.clone(),
    ));

    register(&shared).await;
    publish_types(&shared).await;
    let heartbeat = tokio::spawn(heartbeat_loop(
        Arc::clone(&shared),
        shutdown.clone(),
        background.clone(),
    ));
    let batcher = tokio::spawn(complete_loop(Arc::clone(&shared), rx));

    let attempts = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(shared.settings.concurrency));
    fetch_loop(&shared, &slots, &attempts, &shutdown).await;
    shared.settings.readiness.set(false);

    // Drain: let running attempts finish within the grace period, then requeue what is left.
    attempts.close();
    tracing::info!(running = shared.running().len(), grace = ?shared.settings.shutdown_grace, "draining");
    if tokio::time::timeout(shared.settings.shutdown_grace, attempts.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            running = shared.running().len(),
            "grace period over: requeueing unfinished tasks"
        );
        shared.stop_all(StopReason::Shutdown);
        attempts.wait().await;
    }
    background.cancel();
    let _ = heartbeat.await;
    let report = WorkerReport {
        processed: shared.processed.load(Ordering::Relaxed),
        failed: shared.failed.load(Ordering::Relaxed),
        requeued: shared.requeued.load(Ordering::Relaxed),
    };
    // Every attempt has sent its outcome; dropping the last sender lets the batcher flush and end.
    let store = shared.store.clone();
    drop(shared);
    let _ = batcher.await;
    if let Err(e) = store.heartbeat(&id, HeartbeatMode::Leave, &[]).await {
        tracing::warn!(error = %e, "could not unregister; the lease will expire by itself");
    }
    let _ = subscriber.quit().await;
    report
}

async fn register(shared: &Shared) {
    let mut delay = Duration::from_millis(100);
    loop {
        match shared
            .store
            .heartbeat(
                &shared.settings.worker_id,
                HeartbeatMode::Register,
                &shared.info(),
            )
            .await
        {
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot register with redis; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn publish_types(shared: &Shared) {
    let types = shared
        .registry
        .catalog()
        .specs()
        .iter()
        .filter_map(|s| serde_json::to_string(s).ok().map(|j| (s.name.clone(), j)))
        .collect();
    if let Err(e) = shared.store.publish_task_types(types).await {
        tracing::warn!(error = %e, "could not publish task types");
    }
}

async fn listen(
    shared: Arc<Shared>,
    mut messages: tokio::sync::broadcast::Receiver<fred::types::Message>,
    control: String,
    stop: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return,
            m = messages.recv() => m,
        };
        match msg {
            Ok(m) if *m.channel == *control => {
                let id = m.value.as_string().unwrap_or_default();
                if let Some(r) = shared.running().get(&id) {
                    tracing::info!(task_id = %id, "cancellation requested");
                    r.stop(StopReason::Cancelled);
                }
            }
            Ok(_) => shared.wake.notify_one(),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => shared.wake.notify_one(),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn fetch_loop(
    shared: &Arc<Shared>,
    slots: &Arc<Semaphore>,
    attempts: &TaskTracker,
    shutdown: &CancellationToken,
) {
    let mut error_delay = Duration::from_millis(100);
    loop {
        // Wait for a free slot, then take every other free slot too: one claim fills them all.
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = Arc::clone(slots).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let mut permits = vec![first];
        while permits.len() < shared.settings.max_batch {
            match Arc::clone(slots).try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let claim = shared
            .store
            .claim(
                &shared.settings.worker_id,
                &shared.settings.queues,
                permits.len(),
            )
            .await;
        match claim {
            Ok(Claim::Tasks { tasks, next_wake }) => {
                error_delay = Duration::from_millis(100);
                let idle = tasks.is_empty();
                for (task, permit) in tasks.into_iter().zip(permits.drain(..)) {
                    attempts.spawn(execute(Arc::clone(shared), task, permit));
                }
                drop(permits);
                if idle {
                    // Nothing to do: sleep until work is published, the next eta or lease expiry is due
                    // (timed here, precisely, not by a Redis blocking timeout), or at most a second.
                    let nap = next_wake
                        .unwrap_or(Duration::from_secs(1))
                        .min(Duration::from_secs(1));
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = shared.wake.notified() => {}
                        _ = tokio::time::sleep(nap) => {}
                    }
                }
            }
            Ok(Claim::LeaseLost) => {
                drop(permits);
                lease_lost(shared).await;
            }
            Err(e) => {
                drop(permits);
                tracing::warn!(error = %e, "claim failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(error_delay) => {}
                }
                error_delay = (error_delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Our lease expired (a long pause, a partition): our tasks were recovered and may already run elsewhere.
/// Stop them — their completions would be rejected anyway — and register as a fresh worker.
async fn lease_lost(shared: &Shared) {
    metrics::counter!("redline_worker_leases_lost_total").increment(1);
    tracing::error!(worker_id = %shared.settings.worker_id, "lease lost: abandoning running tasks and registering again");
    shared.stop_all(StopReason::LeaseLost);
    register(shared).await;
}

async fn heartbeat_loop(shared: Arc<Shared>, draining: CancellationToken, stop: CancellationToken) {
    // Three heartbeats per lease: one lost packet or a slow round trip doesn't cost the lease.
    let interval = shared.store.config().lease / 3;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match shared
            .store
            .heartbeat(
                &shared.settings.worker_id,
                HeartbeatMode::Renew,
                &shared.info(),
            )
            .await
        {
            Ok(true) => {
                if !draining.is_cancelled() {
                    shared.settings.readiness.set(true);
                }
                // Housekeeping even when every slot is busy: recover other workers' lost tasks and
                // promote due ones, so an idle peer can run them at once.
                if let Ok(Claim::LeaseLost) = shared
                    .store
                    .claim(&shared.settings.worker_id, &shared.settings.queues, 0)
                    .await
                {
                    lease_lost(&shared).await;
                }
            }
            Ok(false) => lease_lost(&shared).await,
            Err(e) => {
                shared.settings.readiness.set(false);
                tracing::warn!(error = %e, "heartbeat failed");
            }
        }
    }
}

async fn complete_loop(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Finished>) {
    let store = shared.store.clone();
    let worker_id = shared.settings.worker_id.clone();
    drop(shared); // the loop ends when every sender (Shared and the attempts) is gone
    let mut stats = Vec::new();
    let mut labels = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut batch = Vec::new();
        labels.clear();
        let mut next = Some(first);
        while let Some(f) = next.take() {
            batch.push(f.completion);
            labels.push((f.task_name, f.queue));
            if batch.len() < 512 {
                next = rx.try_recv().ok();
            }
        }
        let mut delay = Duration::from_millis(50);
        let mut tries = 0;
        loop {
            match store.complete(&worker_id, &batch).await {
                Ok(results) => {
                    stats.clear();
                    stats.extend(results);
                    for ((c, (task_name, queue)), r) in batch.iter().zip(&labels).zip(&stats) {
                        let Completed::Applied(state) = r else {
                            metrics::counter!("redline_worker_stale_completions_total")
                                .increment(1);
                            tracing::warn!(task_id = %c.id, fence = c.fence, "completion rejected: the lease was lost and the task moved on");
                            continue;
                        };
                        metrics::counter!(
                            "redline_tasks_completed_total",
                            "task_name" => task_name.clone(),
                            "queue" => queue.clone(),
                            "outcome" => outcome_label(&c.outcome, *state)
                        )
                        .increment(1);
                    }
                    break;
                }
                Err(e) if e.is_unavailable() && tries < 600 => {
                    // Redis is away: keep the outcomes and try again. They are fenced, so a batch that was
                    // applied before its reply got lost is rejected as stale the second time, not applied twice.
                    tries += 1;
                    tracing::warn!(error = %e, pending = batch.len(), "recording outcomes failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    tracing::error!(error = %e, pending = batch.len(), "outcomes lost; their tasks will be recovered when the lease expires");
                    break;
                }
            }
        }
    }
}

/// What became of an attempt, as metrics name it: a retry the budget refused is a failure.
fn outcome_label(outcome: &Outcome, applied: TaskState) -> &'static str {
    match outcome {
        Outcome::Succeeded(_) => "succeeded",
        Outcome::Retry { .. } if applied == TaskState::Failed => "failed",
        Outcome::Retry { .. } => "retried",
        Outcome::Failed(_) => "failed",
        Outcome::Cancelled(_) => "cancelled",
        Outcome::Requeue => "requeued",
    }
}

/// The span of one attempt: an OpenTelemetry consumer span (messaging conventions) in a trace of its own,
/// linked to the span that submitted the task. A link rather than a parent keeps long, delayed or retried
/// work out of the request's trace, and every attempt links back the same way.
fn attempt_span(task: &ClaimedTask) -> tracing::Span {
    let span = tracing::info_span!(
        "task",
        otel.name = %format_args!("process {}", task.queue),
        otel.kind = "consumer",
        messaging.system = "redis",
        messaging.operation.type = "process",
        messaging.destination.name = %task.queue,
        messaging.message.id = %task.id,
        task_id = %task.id,
        task_name = %task.name,
        attempt = task.attempt,
        trace_id = tracing::field::Empty,
    );
    if let Some(tp) = &task.traceparent {
        redline_runtime::telemetry::link(&span, tp);
    }
    redline_runtime::telemetry::record_trace_id(&span);
    span
}

async fn execute(shared: Arc<Shared>, task: ClaimedTask, permit: OwnedSemaphorePermit) {
    let cancel = CancellationToken::new();
    let reason = Arc::new(Mutex::new(None));
    shared.running().insert(
        task.id.clone(),
        Running {
            cancel: cancel.clone(),
            reason: Arc::clone(&reason),
        },
    );
    metrics::counter!("redline_tasks_started_total", "task_name" => task.name.clone(), "queue" => task.queue.clone())
        .increment(1);
    if task.attempt == 1 {
        // Since submission: for a task submitted with an eta or countdown this includes its planned delay.
        let waited = redline_runtime::clock::epoch_us().saturating_sub(task.submitted_us);
        metrics::histogram!("redline_task_queue_wait_seconds", "queue" => task.queue.clone())
            .record(waited as f64 / 1e6);
    }
    let in_flight = metrics::gauge!("redline_worker_tasks_in_flight");
    in_flight.increment(1.0);
    let started = std::time::Instant::now();
    let outcome = attempt(&shared, &task, cancel, &reason)
        .instrument(attempt_span(&task))
        .await;
    in_flight.decrement(1.0);
    metrics::histogram!("redline_task_run_seconds", "task_name" => task.name.clone(), "queue" => task.queue.clone())
        .record(started.elapsed().as_secs_f64());
    shared.running().remove(&task.id);
    if let Some(outcome) = outcome {
        match &outcome {
            Outcome::Retry { .. } | Outcome::Failed(_) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                shared.processed.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Requeue => {
                shared.requeued.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Succeeded(_) | Outcome::Cancelled(_) => {
                shared.processed.fetch_add(1, Ordering::Relaxed);
            }
        }
        let _ = shared.completions.send(Finished {
            completion: Completion {
                id: task.id.clone(),
                fence: task.fence,
                outcome,
            },
            task_name: task.name.clone(),
            queue: task.queue.clone(),
        });
    }
    drop(permit);
}

/// Runs one attempt and decides its outcome; `None` when the attempt was abandoned (lease lost).
async fn attempt(
    shared: &Shared,
    task: &ClaimedTask,
    cancel: CancellationToken,
    reason: &Arc<Mutex<Option<StopReason>>>,
) -> Option<Outcome> {
    let Some((spec, handler)) = shared.registry.get(&task.name) else {
        return Some(Outcome::Failed(format!(
            "no worker handler is registered for task type '{}'",
            task.name
        )));
    };
    let empty = Vec::new();
    let args = task.args.as_array().unwrap_or(&empty);
    let kwargs = task.kwargs.as_object().cloned().unwrap_or_default();
    let kwargs = match spec.bind(args, &kwargs) {
        Ok(k) => k,
        Err(violations) => {
            let msg: Vec<String> = violations
                .iter()
                .map(|v| format!("{}: {}", v.field, v.description))
                .collect();
            return Some(Outcome::Failed(format!(
                "invalid arguments: {}",
                msg.join("; ")
            )));
        }
    };
    let ctx = TaskContext::new(
        task.id.clone(),
        task.attempt,
        task.fence,
        cancel.clone(),
        shared.store.clone(),
    );
    let mut join = tokio::spawn(handler.run(ctx, kwargs));
    let limit = if task.time_limit.is_zero() {
        spec.time_limit
    } else {
        task.time_limit
    };

    let finished = tokio::select! {
        r = &mut join => Some(r),
        _ = tokio::time::sleep(limit) => {
            reason.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(StopReason::TimedOut);
            cancel.cancel();
            None
        }
        _ = cancel.cancelled() => None,
    };
    let result = match finished {
        Some(r) => r,
        // Asked to stop: the handler gets a grace period to notice its token, then it is aborted.
        None => match tokio::time::timeout(shared.settings.cancel_grace, &mut join).await {
            Ok(r) => r,
            Err(_) => {
                join.abort();
                tracing::warn!(task_id = %task.id, "handler ignored cancellation; aborted");
                Ok(Err(TaskError::Cancelled))
            }
        },
    };
    let stop = *reason.lock().unwrap_or_else(PoisonError::into_inner);
    let retry = |error: String| Outcome::Retry {
        error,
        delay: shared
            .settings
            .backoff
            .delay(task.retries, &mut rand::rng()),
    };
    let stopped = || match stop {
        Some(StopReason::LeaseLost) => None,
        Some(StopReason::Shutdown) => Some(Outcome::Requeue),
        Some(StopReason::TimedOut) => Some(retry(format!(
            "time limit of {} s exceeded",
            limit.as_secs_f64()
        ))),
        Some(StopReason::Cancelled) | None => Some(Outcome::Cancelled("cancelled".to_owned())),
    };
    match result {
        Ok(Ok(value)) => Some(Outcome::Succeeded(value)),
        Ok(Err(TaskError::Retryable(e))) => Some(retry(e)),
        Ok(Err(TaskError::Fatal(e))) => Some(Outcome::Failed(e)),
        Ok(Err(TaskError::Cancelled)) => stopped(),
        Err(e) if e.is_cancelled() => stopped(),
        Err(e) => Some(retry(format!("handler panicked: {e}"))),
    }
}
