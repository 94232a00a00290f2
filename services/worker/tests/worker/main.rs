//! The worker runtime against a private redis-server, in process: outcomes, retries, time limits,
//! cancellation, shutdown, and eta precision.

use std::time::{Duration, Instant};

use fred::prelude::*;
use futures::FutureExt;
use futures::future::BoxFuture;
use redline_catalog::TaskType;
use redline_taskqueue::backoff::Backoff;
use redline_taskqueue::connect::{self, RedisOptions};
use redline_taskqueue::*;
use redline_testkit::RedisServer;
use redline_worker::worker::{self, WorkerSettings};
use redline_worker::{TaskContext, TaskError, TaskHandler, default_registry};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

/// A task type whose handler never looks at its cancellation token.
struct Stubborn;

impl TaskType for Stubborn {
    const NAME: &'static str = "test.stubborn";
    const DESCRIPTION: &'static str = "ignores cancellation";
    type Args = Map<String, Value>;
    type Output = ();
}

impl TaskHandler for Stubborn {
    type Task = Self;

    fn run(
        &self,
        _: TaskContext,
        _: Map<String, Value>,
    ) -> BoxFuture<'static, Result<(), TaskError>> {
        async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        }
        .boxed()
    }
}

struct Harness {
    redis: RedisServer,
    store: TaskStore,
    workers: Vec<(
        CancellationToken,
        tokio::task::JoinHandle<worker::WorkerReport>,
    )>,
}

impl Harness {
    async fn new() -> Self {
        let redis = RedisServer::start();
        let store = store_for(&redis.url()).await;
        Self {
            redis,
            store,
            workers: Vec::new(),
        }
    }

    fn settings(&self, name: &str) -> WorkerSettings {
        let mut s = WorkerSettings::new(name, vec![DEFAULT_QUEUE.to_owned()], 4);
        s.backoff = Backoff {
            base: Duration::from_millis(20),
            cap: Duration::from_millis(100),
        };
        s.cancel_grace = Duration::from_millis(300);
        s.shutdown_grace = Duration::from_millis(300);
        s
    }

    async fn start(&mut self, settings: WorkerSettings) {
        let mut registry = default_registry();
        registry.register(Stubborn);
        let store = store_for(&self.redis.url()).await;
        let subscriber = connect::subscriber(&self.redis.url(), &RedisOptions::default()).unwrap();
        subscriber.wait_for_connect().await.unwrap();
        let token = CancellationToken::new();
        let handle = tokio::spawn(worker::run(
            store,
            subscriber,
            registry,
            settings,
            token.clone(),
        ));
        self.workers.push((token, handle));
    }

    async fn submit(&self, t: NewTask) -> String {
        self.store.submit(&[t]).await.unwrap().remove(0).id
    }

    async fn wait_state(&self, id: &str, want: TaskState, within: Duration) -> TaskRecord {
        let deadline = Instant::now() + within;
        loop {
            let rec = self.store.get(id).await.unwrap().expect("task exists");
            if rec.state == want {
                return rec;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} is {:?}, wanted {want:?}",
                rec.state
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop_all(&mut self) -> Vec<worker::WorkerReport> {
        let mut out = Vec::new();
        for (token, handle) in self.workers.drain(..) {
            token.cancel();
            out.push(handle.await.unwrap());
        }
        out
    }
}

async fn store_for(url: &str) -> TaskStore {
    redline_testkit::task_store(url, Duration::from_millis(900)).await
}

fn task(name: &str, kwargs: Value) -> NewTask {
    let mut t = NewTask::new(name, DEFAULT_QUEUE);
    t.kwargs = kwargs;
    t
}

#[tokio::test]
async fn runs_tasks_and_records_results() {
    let mut h = Harness::new().await;
    h.start(h.settings("w1")).await;
    let echo = h
        .submit(task("redline.echo", json!({"a": 1, "b": [true]})))
        .await;
    let noop = h.submit(task("redline.noop", json!({}))).await;
    // The Celery-style long name is not registered for diagnostics: it fails, non-retryable, with a reason.
    let unknown = h.submit(task("no.such.type", json!({}))).await;
    let rec = h
        .wait_state(&echo, TaskState::Succeeded, Duration::from_secs(5))
        .await;
    assert_eq!(rec.result, Some(json!({"a": 1, "b": [true]})));
    assert_eq!(rec.attempt, 1);
    h.wait_state(&noop, TaskState::Succeeded, Duration::from_secs(5))
        .await;
    let rec = h
        .wait_state(&unknown, TaskState::Failed, Duration::from_secs(5))
        .await;
    assert!(rec.error.unwrap_or_default().contains("no worker handler"));
    let workers = h.store.workers().await.unwrap();
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].id, "w1");
    let reports = h.stop_all().await;
    assert_eq!(reports[0].processed, 3);
    assert!(
        h.store.workers().await.unwrap().is_empty(),
        "a drained worker leaves"
    );
}

#[tokio::test]
async fn retryable_errors_retry_with_backoff_then_fail() {
    let mut h = Harness::new().await;
    h.start(h.settings("w")).await;
    let mut t = task("redline.fail", json!({"message": "flaky"}));
    t.max_retries = 2;
    let flaky = h.submit(t).await;
    let fatal = h
        .submit(task(
            "redline.fail",
            json!({"message": "bad input", "retryable": false}),
        ))
        .await;
    let rec = h
        .wait_state(&flaky, TaskState::Failed, Duration::from_secs(5))
        .await;
    assert_eq!(
        (rec.attempt, rec.retries, rec.error.as_deref()),
        (3, 2, Some("flaky"))
    );
    let rec = h
        .wait_state(&fatal, TaskState::Failed, Duration::from_secs(5))
        .await;
    assert_eq!(rec.attempt, 1);
    let stats = h.store.stats().await.unwrap();
    assert_eq!(stats.dead_letter, 2);
    assert_eq!(stats.queues[0].retried, 2);
    h.stop_all().await;
}

#[tokio::test]
async fn time_limit_stops_the_attempt_and_counts_as_a_failure() {
    let mut h = Harness::new().await;
    h.start(h.settings("w")).await;
    let mut t = task("redline.sleep", json!({"seconds": 30}));
    t.time_limit = Duration::from_millis(200);
    t.max_retries = 0;
    let id = h.submit(t).await;
    let start = Instant::now();
    let rec = h
        .wait_state(&id, TaskState::Failed, Duration::from_secs(5))
        .await;
    assert!(rec.error.unwrap_or_default().contains("time limit"));
    assert!(start.elapsed() < Duration::from_secs(2));
    h.stop_all().await;
}

#[tokio::test]
async fn cancelling_a_running_task_stops_it_and_stubborn_handlers_are_aborted() {
    let mut h = Harness::new().await;
    h.start(h.settings("w")).await;
    let polite = h
        .submit(task("redline.sleep", json!({"seconds": 30})))
        .await;
    let stubborn = h.submit(task("test.stubborn", json!({}))).await;
    h.wait_state(&polite, TaskState::Running, Duration::from_secs(5))
        .await;
    h.wait_state(&stubborn, TaskState::Running, Duration::from_secs(5))
        .await;
    assert_eq!(
        h.store.cancel(&polite).await.unwrap(),
        CancelOutcome::Requested
    );
    assert_eq!(
        h.store.cancel(&stubborn).await.unwrap(),
        CancelOutcome::Requested
    );
    let start = Instant::now();
    h.wait_state(&polite, TaskState::Cancelled, Duration::from_secs(2))
        .await;
    let polite_took = start.elapsed();
    h.wait_state(&stubborn, TaskState::Cancelled, Duration::from_secs(3))
        .await;
    assert!(
        polite_took < Duration::from_millis(250),
        "polite handler took {polite_took:?}"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "stubborn handler was given its grace period"
    );
    h.stop_all().await;
}

#[tokio::test]
async fn progress_is_visible_while_running() {
    let mut h = Harness::new().await;
    h.start(h.settings("w")).await;
    let id = h.submit(task("redline.sleep", json!({"seconds": 2}))).await;
    h.wait_state(&id, TaskState::Running, Duration::from_secs(5))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rec = h.store.get(&id).await.unwrap().unwrap();
    assert_eq!(
        rec.progress.as_ref().and_then(|p| p.get("step")),
        Some(&json!("sleeping"))
    );
    h.wait_state(&id, TaskState::Succeeded, Duration::from_secs(5))
        .await;
    h.stop_all().await;
}

#[tokio::test]
async fn shutdown_requeues_unfinished_tasks_without_using_an_attempt() {
    let mut h = Harness::new().await;
    h.start(h.settings("w")).await;
    let id = h
        .submit(task("redline.sleep", json!({"seconds": 30})))
        .await;
    h.wait_state(&id, TaskState::Running, Duration::from_secs(5))
        .await;
    let reports = h.stop_all().await;
    assert_eq!(reports[0].requeued, 1);
    let rec = h.store.get(&id).await.unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.attempt, rec.retries),
        (TaskState::Queued, 0, 0)
    );
}

#[tokio::test]
async fn due_tasks_start_within_50_ms_of_their_eta() {
    let mut h = Harness::new().await;
    h.start(h.settings("w")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut lateness = Vec::new();
    for countdown in [150u64, 300, 450] {
        let mut t = task("redline.noop", json!({}));
        t.countdown = Some(Duration::from_millis(countdown));
        let id = h.submit(t).await;
        let rec = h
            .wait_state(&id, TaskState::Succeeded, Duration::from_secs(5))
            .await;
        let due = rec.submitted_us / 1000 + countdown;
        let started = rec.started_us.unwrap() / 1000;
        assert!(started >= due, "started {} ms early", due - started);
        lateness.push(started - due);
    }
    assert!(
        lateness.iter().all(|l| *l <= 50),
        "lateness {lateness:?} ms"
    );
    h.stop_all().await;
}

#[tokio::test]
async fn many_tasks_over_two_workers_each_complete_exactly_once() {
    let mut h = Harness::new().await;
    h.start(h.settings("a")).await;
    h.start(h.settings("b")).await;
    let tasks: Vec<NewTask> = (0..2000).map(|_| task("redline.noop", json!({}))).collect();
    for chunk in tasks.chunks(200) {
        h.store.submit(chunk).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = h.store.stats().await.unwrap();
        if s.queues[0].succeeded == 2000 {
            break;
        }
        assert!(Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reports = h.stop_all().await;
    assert_eq!(reports.iter().map(|r| r.processed).sum::<u64>(), 2000);
    let stats = h.store.stats().await.unwrap();
    assert_eq!(stats.stale_completions, 0);
}

/// `/readyz` of the worker's admin port: ready once a heartbeat succeeds, not ready from the start of a drain.
#[tokio::test]
async fn readiness_follows_heartbeats_and_drain() {
    let mut h = Harness::new().await;
    let mut settings = h.settings("ready");
    settings.shutdown_grace = Duration::from_secs(5);
    let readiness = settings.readiness.clone();
    assert!(!readiness.get(), "not ready before the first heartbeat");
    h.start(settings).await;
    let deadline = Instant::now() + Duration::from_secs(3);
    while !readiness.get() {
        assert!(Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let id = h.submit(task("redline.sleep", json!({"seconds": 1}))).await;
    h.wait_state(&id, TaskState::Running, Duration::from_secs(5))
        .await;
    let (token, handle) = h.workers.pop().expect("worker");
    token.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !readiness.get(),
        "draining (a task still running) is not ready"
    );
    assert!(!handle.is_finished(), "still draining its running task");
    let report = handle.await.unwrap();
    assert_eq!(
        report.processed, 1,
        "the running task finished in the grace period"
    );
    assert!(!readiness.get());
}

/// A result larger than the cap fails its task, with the reason, instead of filling Redis.
#[tokio::test]
async fn results_over_the_size_cap_fail_their_task() {
    let mut h = Harness::new().await;
    let mut settings = h.settings("w1");
    settings.max_result_bytes = 2048;
    h.start(settings).await;
    let small = h.submit(task("redline.echo", json!({"a": "x"}))).await;
    let big = h
        .submit(task("redline.echo", json!({"a": "x".repeat(4096)})))
        .await;
    h.wait_state(&small, TaskState::Succeeded, Duration::from_secs(5))
        .await;
    let rec = h
        .wait_state(&big, TaskState::Failed, Duration::from_secs(5))
        .await;
    assert!(
        rec.error
            .as_deref()
            .unwrap_or_default()
            .contains("at most 2048"),
        "{:?}",
        rec.error
    );
    assert_eq!(rec.result, None);
    h.stop_all().await;
}
