//! The worker runtime: a fetch loop, one Tokio task per running attempt, a completion batcher and a
//! heartbeat, all stopped by one [`CancellationToken`].
//!
//! ```text
//!  wake-ups (pub/sub) ─┐                        ┌──► attempt ─┐
//!  eta / lease timers ─┼─► fetch: claim(free) ──┼──► attempt ─┼─► completions ─► batcher: complete(batch)
//!  free slots ─────────┘                        └──► attempt ─┘
//!  heartbeat: renew lease, reconcile held tasks, housekeeping ── lease lost? ──► abandon attempts, register
//!  fence: no renewal for lease − margin ──► stop every attempt (exit if one cannot be stopped in time)
//!  control (pub/sub): cancel <id> ──► that attempt's token
//! ```
//!
//! Claims and completions are batched: a worker with many free slots takes many tasks in one script call,
//! and finished attempts are recorded together. That is what lets two worker processes drain tens of
//! thousands of short tasks per second from one Redis.
//!
//! ## Leases, self-fencing and outages
//!
//! A worker holds its tasks under one lease (default 14 s) that its heartbeat renews every 1/15 of it.
//! Whatever Redis says, the worker keeps its own deadline: counted on its monotonic clock from when the last
//! renewal that succeeded was *sent* (Redis set the expiry after that instant, so the worker's deadline can
//! only come first), minus a margin of 1/8 of the lease. When it passes, the worker stops every attempt
//! (cancellation, then abort), and if one cannot be stopped before the lease could expire the process exits
//! rather than run it beside its replacement. A partitioned worker and a Redis outage look the same from
//! here, so the one window covers both:
//!
//! - **SIGKILL** (or a crash): nothing renews; peers recover the tasks when the lease expires, ≤ 14 s later.
//! - **Partition of one worker** (Redis serves the others): it stops its attempts 12.25 s after its last
//!   renewal; its lease expires at ≥ 14 s and a peer runs them again. The two never overlap.
//! - **Redis stall or restart**: lease time only runs while Redis serves (`observe_outage` in the scripts),
//!   so nothing is recovered because of the outage itself. Up to about 11 s (12.25 s minus a heartbeat and a
//!   reconnection), the worker renews in time and nothing is re-run; longer, it stops its attempts, and the
//!   heartbeat after Redis returns hands them back to the queue without spending their retry budget or
//!   poison-pill count.
//!
//! Every heartbeat also reconciles: it sends the tasks the worker holds, and Redis hands back to their queue
//! any it has under the worker that the worker does not hold (a claim whose reply was lost), names held
//! tasks whose record moved on (they stop), and re-delivers cancellations (a lost pub/sub message).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use redline_taskqueue::backoff::Backoff;
use redline_taskqueue::{
    Claim, ClaimedTask, Completed, Completion, Heartbeat, HeartbeatMode, Outcome, TaskState,
    TaskStore,
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
    /// Exit the process when an attempt cannot be stopped before its lease could expire (the binary does;
    /// an in-process test cannot).
    pub exit_on_stuck_attempt: bool,
    /// Largest result stored, in bytes of JSON; a larger one fails its task. Results live in Redis for the
    /// result TTL, so this bounds the memory a finished task can take.
    pub max_result_bytes: usize,
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
            exit_on_stuck_attempt: false,
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
        }
    }
}

/// [`WorkerSettings::max_result_bytes`] by default: 256 KiB.
pub const DEFAULT_MAX_RESULT_BYTES: usize = 256 << 10;

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
    /// Redis says the task is no longer this attempt's (lease lost, record moved on).
    LeaseLost,
    /// No lease renewal for too long: stopped before the lease can expire elsewhere.
    Fenced,
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
    /// Every task this worker holds, with its fence: running, or with an outcome not yet recorded. What the
    /// heartbeat reconciles Redis's view against.
    held: Mutex<HashMap<String, u64>>,
    /// Held by a claim from before it is sent until its tasks are in `held`, and by a reconciling heartbeat
    /// around its call: a heartbeat never sees tasks a claim has handed over but `held` does not list yet.
    claim_gate: tokio::sync::Mutex<()>,
    /// When the last renewal that succeeded (a heartbeat or a claim) was sent.
    renewed: Mutex<Instant>,
    /// Attempts that ignored cancellation and an abort; while any is left, a fenced worker must exit.
    stuck: AtomicU64,
    processed: AtomicU64,
    failed: AtomicU64,
    requeued: AtomicU64,
    wake: Notify,
    completions: mpsc::UnboundedSender<Finished>,
}

/// An attempt's outcome on its way to Redis, with what its metrics are labelled by. The attempt's slot is
/// held until the outcome is recorded, so outcomes waiting out a Redis outage are bounded by concurrency.
struct Finished {
    completion: Completion,
    task_name: String,
    queue: String,
    _slot: OwnedSemaphorePermit,
}

impl Shared {
    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn held_list(&self) -> Vec<(String, u64)> {
        self.held()
            .iter()
            .map(|(id, fence)| (id.clone(), *fence))
            .collect()
    }

    /// Forgets a held task, if it is still held under `fence` (a newer claim of the same id stays).
    fn release(&self, id: &str, fence: u64) {
        let mut held = self.held();
        if held.get(id) == Some(&fence) {
            held.remove(id);
        }
    }

    fn renewed(&self, sent: Instant) {
        let mut last = self.renewed.lock().unwrap_or_else(PoisonError::into_inner);
        if sent > *last {
            *last = sent;
        }
    }

    fn last_renewal(&self) -> Instant {
        *self.renewed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stop_all(&self, reason: StopReason) {
        for r in self.running().values() {
            r.stop(reason);
        }
    }

    fn stop(&self, id: &str, reason: StopReason) -> bool {
        match self.running().get(id) {
            Some(r) => {
                r.stop(reason);
                true
            }
            None => false,
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

    /// The lease, and the margin before it by which this worker stops its attempts without a renewal.
    fn lease_and_margin(&self) -> (Duration, Duration) {
        let lease = self.store.config().lease;
        (lease, lease / 8)
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
        held: Mutex::new(HashMap::new()),
        claim_gate: tokio::sync::Mutex::new(()),
        renewed: Mutex::new(Instant::now()),
        stuck: AtomicU64::new(0),
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
    tokio::spawn(fence_loop(Arc::clone(&shared), background.clone()));
    let flush_deadline = CancellationToken::new();
    let batcher = tokio::spawn(complete_loop(
        Arc::clone(&shared),
        rx,
        flush_deadline.clone(),
    ));

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
    let report = WorkerReport {
        processed: shared.processed.load(Ordering::Relaxed),
        failed: shared.failed.load(Ordering::Relaxed),
        requeued: shared.requeued.load(Ordering::Relaxed),
    };
    // Every attempt has sent its outcome; the batcher records them (retrying through a Redis outage for
    // another grace period at most) and ends when the last sender, `shared`'s, is gone.
    let store = shared.store.clone();
    let flush_grace = shared.settings.shutdown_grace.max(Duration::from_secs(1));
    let deadline = tokio::spawn(async move {
        tokio::time::sleep(flush_grace).await;
        flush_deadline.cancel();
    });
    background.cancel();
    let _ = heartbeat.await;
    drop(shared);
    let _ = batcher.await;
    deadline.abort();
    // Leaving hands back whatever Redis still has under this worker (an outcome that could not be
    // recorded), instead of leaving it to a lease nobody will renew.
    match store.heartbeat(&id, HeartbeatMode::Leave, &[], &[]).await {
        Ok(hb) if hb.given_back > 0 => {
            tracing::warn!(
                tasks = hb.given_back,
                "handed unrecorded tasks back to their queues"
            )
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "could not unregister; peers recover this worker's tasks when its lease expires")
        }
    }
    let _ = subscriber.quit().await;
    report
}

async fn register(shared: &Shared) {
    let mut delay = Duration::from_millis(100);
    loop {
        let gate = shared.claim_gate.lock().await;
        let sent = Instant::now();
        let result = shared
            .store
            .heartbeat(
                &shared.settings.worker_id,
                HeartbeatMode::Register,
                &shared.held_list(),
                &shared.info(),
            )
            .await;
        drop(gate);
        match result {
            Ok(hb) => {
                shared.renewed(sent);
                if hb.given_back > 0 {
                    // An earlier process with this worker id left tasks under it.
                    tracing::warn!(
                        tasks = hb.given_back,
                        "handed back tasks this worker id held before"
                    );
                }
                return;
            }
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
                if shared.stop(&id, StopReason::Cancelled) {
                    tracing::info!(task_id = %id, "cancellation requested");
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
        let gate = shared.claim_gate.lock().await;
        let sent = Instant::now();
        let claim = shared
            .store
            .claim(
                &shared.settings.worker_id,
                &shared.settings.queues,
                permits.len(),
            )
            .await;
        if let Ok(Claim::Tasks { tasks, .. }) = &claim {
            // A claim renews the lease too.
            shared.renewed(sent);
            shared
                .held()
                .extend(tasks.iter().map(|t| (t.id.clone(), t.fence)));
        }
        drop(gate);
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
                // The claim may have run with its reply lost: the next heartbeat hands back whatever it took.
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
    // Fifteen heartbeats per lease: a few lost ones or a slow round trip don't cost the lease, and a
    // renewal lands soon after Redis comes back. After a failure, sooner still.
    let interval = (shared.store.config().lease / 15).max(Duration::from_millis(10));
    let retry = interval.min(Duration::from_millis(250));
    let mut wait = interval;
    let mut beats = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let gate = shared.claim_gate.lock().await;
        let sent = Instant::now();
        let result = shared
            .store
            .heartbeat(
                &shared.settings.worker_id,
                HeartbeatMode::Renew,
                &shared.held_list(),
                &shared.info(),
            )
            .await;
        drop(gate);
        match result {
            Ok(hb) if hb.alive => {
                wait = interval;
                shared.renewed(sent);
                if !draining.is_cancelled() {
                    shared.settings.readiness.set(true);
                }
                reconciled(&shared, &hb);
                // Housekeeping even when every slot is busy: recover other workers' lost tasks and
                // promote due ones, so an idle peer can run them at once.
                beats += 1;
                if beats.is_multiple_of(5)
                    && let Ok(Claim::LeaseLost) = shared
                        .store
                        .claim(&shared.settings.worker_id, &shared.settings.queues, 0)
                        .await
                {
                    lease_lost(&shared).await;
                }
            }
            Ok(_) => lease_lost(&shared).await,
            Err(e) => {
                wait = retry;
                shared.settings.readiness.set(false);
                tracing::warn!(error = %e, "heartbeat failed");
            }
        }
    }
}

/// Acts on what a heartbeat's reconciliation found.
fn reconciled(shared: &Shared, hb: &Heartbeat) {
    if hb.given_back > 0 {
        metrics::counter!("redline_worker_tasks_given_back_total").increment(hb.given_back);
        tracing::warn!(
            tasks = hb.given_back,
            "Redis had tasks under this worker that it never received (a lost claim reply): handed back"
        );
    }
    for id in &hb.stop {
        if shared.stop(id, StopReason::LeaseLost) {
            tracing::warn!(task_id = %id, "task moved on without this worker: stopping its attempt");
        }
    }
    for id in &hb.cancel {
        if shared.stop(id, StopReason::Cancelled) {
            tracing::info!(task_id = %id, "cancellation requested (re-read by the heartbeat)");
        }
    }
}

/// Stops every attempt when the lease may be about to expire without this worker knowing: a partition or a
/// Redis outage. See the module documentation for how the window is chosen.
async fn fence_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let (lease, margin) = shared.lease_and_margin();
    let window = lease - margin;
    let mut fenced_since: Option<Instant> = None;
    loop {
        let last = shared.last_renewal();
        let now = Instant::now();
        let check = if last + window > now {
            fenced_since = None;
            last + window
        } else {
            if fenced_since.is_none() && !shared.running().is_empty() {
                metrics::counter!("redline_worker_self_fenced_total").increment(1);
                tracing::error!(
                    without_renewal = ?now - last,
                    running = shared.running().len(),
                    "lease not renewed in time: stopping every attempt before it can expire elsewhere"
                );
                shared.stop_all(StopReason::Fenced);
            }
            let since = *fenced_since.get_or_insert(now);
            // The last instant by which every attempt must have stopped: well before the lease runs out.
            if now >= last + window + margin * 2 / 3
                && (shared.stuck.load(Ordering::Relaxed) > 0 || !shared.running().is_empty())
            {
                tracing::error!(
                    running = shared.running().len(),
                    "an attempt could not be stopped before the lease could expire"
                );
                if shared.settings.exit_on_stuck_attempt {
                    tracing::error!("exiting so that it cannot run beside its replacement");
                    #[allow(clippy::exit)]
                    // The only way to stop code that ignores cancellation and abort.
                    std::process::exit(EXIT_STUCK);
                }
            }
            (since + margin / 6).max(now + Duration::from_millis(10))
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(check) => {}
        }
    }
}

/// Exit status of a worker that stopped itself because an attempt would not stop (EX_SOFTWARE).
pub const EXIT_STUCK: i32 = 70;

async fn complete_loop(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Finished>,
    give_up: CancellationToken,
) {
    let store = shared.store.clone();
    let worker_id = shared.settings.worker_id.clone();
    // Not a strong reference: the loop ends when every sender (Shared's) is gone.
    let weak = Arc::downgrade(&shared);
    drop(shared);
    let mut stats = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        let completions: Vec<Completion> = batch.iter().map(|f| f.completion.clone()).collect();
        let mut delay = Duration::from_millis(50);
        loop {
            match store.complete(&worker_id, &completions).await {
                Ok(results) => {
                    stats.clear();
                    stats.extend(results);
                    for (f, r) in batch.iter().zip(&stats) {
                        let c = &f.completion;
                        let Completed::Applied(state) = r else {
                            metrics::counter!("redline_worker_stale_completions_total")
                                .increment(1);
                            tracing::warn!(task_id = %c.id, fence = c.fence, "completion rejected: the lease was lost and the task moved on");
                            continue;
                        };
                        metrics::counter!(
                            "redline_tasks_completed_total",
                            "task_name" => f.task_name.clone(),
                            "queue" => f.queue.clone(),
                            "outcome" => outcome_label(&c.outcome, *state)
                        )
                        .increment(1);
                    }
                    break;
                }
                Err(e) if e.is_unavailable() && !give_up.is_cancelled() => {
                    // Redis is away, full or read-only: keep the outcomes (their slots stay taken, so they
                    // are bounded) and try again until they land. They are fenced and a replay is
                    // recognised, so a batch applied before its reply got lost is not applied twice.
                    tracing::warn!(error = %e, pending = batch.len(), "recording outcomes failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = give_up.cancelled() => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    // Not recorded: the tasks stay under this worker in Redis until it leaves (which hands
                    // them back) or its lease expires, and then run again.
                    tracing::error!(error = %e, pending = batch.len(), "outcomes not recorded; their tasks will run again");
                    break;
                }
            }
        }
        if let Some(shared) = weak.upgrade() {
            for f in &batch {
                shared.release(&f.completion.id, f.completion.fence);
            }
        }
        // Dropping the batch frees the attempts' slots.
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
    let Some(outcome) = outcome else {
        // Abandoned (the task moved on, or this worker fenced itself): nothing to record. If Redis still has
        // it under this worker, the next heartbeat hands it back.
        shared.release(&task.id, task.fence);
        return;
    };
    {
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
        let finished = Finished {
            completion: Completion {
                id: task.id.clone(),
                fence: task.fence,
                outcome,
            },
            task_name: task.name.clone(),
            queue: task.queue.clone(),
            _slot: permit,
        };
        if shared.completions.send(finished).is_err() {
            shared.release(&task.id, task.fence);
        }
    }
}

/// Runs one attempt and decides its outcome; `None` when the attempt was abandoned (lease lost).
async fn attempt(
    shared: &Arc<Shared>,
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
        // Asked to stop: the handler gets a grace period to notice its token, then it is aborted. A fenced
        // worker has less time: the lease may be about to expire.
        None => {
            let fenced =
                *reason.lock().unwrap_or_else(PoisonError::into_inner) == Some(StopReason::Fenced);
            let grace = if fenced {
                shared
                    .settings
                    .cancel_grace
                    .min(shared.lease_and_margin().1 / 3)
            } else {
                shared.settings.cancel_grace
            };
            match tokio::time::timeout(grace, &mut join).await {
                Ok(r) => r,
                Err(_) => {
                    join.abort();
                    tracing::warn!(task_id = %task.id, "handler ignored cancellation; aborted");
                    // An abort takes effect at the handler's next await; code that never awaits (a
                    // blocking loop) runs on. Count it until it ends: a fenced worker must not keep it.
                    if tokio::time::timeout(grace, &mut join).await.is_err() {
                        shared.stuck.fetch_add(1, Ordering::Relaxed);
                        let counter = Arc::clone(shared);
                        tokio::spawn(async move {
                            let _ = join.await;
                            counter.stuck.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                    Ok(Err(TaskError::Cancelled))
                }
            }
        }
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
        Some(StopReason::LeaseLost | StopReason::Fenced) => None,
        Some(StopReason::Shutdown) => Some(Outcome::Requeue),
        Some(StopReason::TimedOut) => Some(retry(format!(
            "time limit of {} s exceeded",
            limit.as_secs_f64()
        ))),
        Some(StopReason::Cancelled) | None => Some(Outcome::Cancelled("cancelled".to_owned())),
    };
    match result {
        Ok(Ok(value)) => {
            let size = value.to_string().len();
            if size > shared.settings.max_result_bytes {
                return Some(Outcome::Failed(format!(
                    "the result is {size} bytes of JSON; at most {} are stored",
                    shared.settings.max_result_bytes
                )));
            }
            Some(Outcome::Succeeded(value))
        }
        Ok(Err(TaskError::Retryable(e))) => Some(retry(e)),
        Ok(Err(TaskError::Fatal(e))) => Some(Outcome::Failed(e)),
        Ok(Err(TaskError::Cancelled)) => stopped(),
        Err(e) if e.is_cancelled() => stopped(),
        Err(e) => Some(retry(format!("handler panicked: {e}"))),
    }
}
