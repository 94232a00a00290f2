//! Delivery under the faults a deployment meets: lost replies, partitions, Redis stalls, OOM, failovers.
//!
//! Every worker reaches Redis through its own [`FaultProxy`], runs the journaled test task, and each test ends
//! by judging the whole history with the journal's checker: nothing lost, nothing left running without a
//! lease, no two executions of a task at once, nothing finished twice.

use std::time::Duration;

use fred::prelude::*;

use redline_taskqueue::connect::{self, RedisOptions};
use redline_taskqueue::*;
use redline_testkit::{FaultProxy, Journal, Journaled, RedisServer, Verdict, assert_eventually};
use redline_worker::default_registry;
use redline_worker::worker::{self, WorkerReport, WorkerSettings};
use serde_json::json;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A worker under test, behind its own proxy.
struct Worker {
    proxy: FaultProxy,
    stop: CancellationToken,
    handle: JoinHandle<WorkerReport>,
}

struct Harness {
    redis: RedisServer,
    /// TaskService's view: submits and reads, straight to Redis.
    store: TaskStore,
    journal: Journal,
    _dir: TempDir,
    lease: Duration,
    workers: Vec<Worker>,
    submitted: Vec<String>,
}

async fn store_for(url: &str, lease: Duration) -> TaskStore {
    redline_testkit::task_store(url, lease).await
}

impl Harness {
    async fn new(redis: RedisServer, lease: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(&dir.path().join("journal.jsonl"));
        Self {
            store: store_for(&redis.url(), lease).await,
            redis,
            journal,
            _dir: dir,
            lease,
            workers: Vec::new(),
            submitted: Vec::new(),
        }
    }

    async fn start_worker(&mut self, id: &str) -> &Worker {
        let proxy = FaultProxy::to_port(self.redis.port()).await;
        let store = store_for(&proxy.url(), self.lease).await;
        let subscriber = connect::subscriber(&proxy.url(), &RedisOptions::default()).unwrap();
        subscriber.wait_for_connect().await.unwrap();
        let mut registry = default_registry();
        registry.register(Journaled::new(self.journal.clone(), id));
        let mut settings = WorkerSettings::new(id, vec![DEFAULT_QUEUE.to_owned()], 8);
        settings.cancel_grace = Duration::from_millis(200);
        settings.shutdown_grace = Duration::from_millis(500);
        let stop = CancellationToken::new();
        let handle = tokio::spawn(worker::run(
            store,
            subscriber,
            registry,
            settings,
            stop.clone(),
        ));
        self.workers.push(Worker {
            proxy,
            stop,
            handle,
        });
        let store = self.store.clone();
        let id = id.to_owned();
        assert_eventually!(
            store
                .workers()
                .await
                .is_ok_and(|w| w.iter().any(|w| w.id == id)),
            "worker {id} registered"
        );
        self.workers.last().unwrap()
    }

    async fn submit(&mut self, n: usize, ms: u64) -> Vec<String> {
        let tasks: Vec<NewTask> = (0..n)
            .map(|_| {
                let mut t = NewTask::new("test.journal", DEFAULT_QUEUE);
                t.kwargs = json!({ "ms": ms });
                t
            })
            .collect();
        let ids: Vec<String> = self
            .store
            .submit(&tasks)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        self.submitted.extend(ids.iter().cloned());
        ids
    }

    async fn record(&self, id: &str) -> TaskRecord {
        self.store.get(id).await.unwrap().expect("a record")
    }

    /// How many of `ids` are in `state`; a record Redis cannot read right now (it is coming back from a
    /// fault) counts as not in it.
    async fn count(&self, ids: &[String], state: TaskState) -> usize {
        let mut n = 0;
        for id in ids {
            if let Ok(Some(r)) = self.store.get(id).await
                && r.state == state
            {
                n += 1;
            }
        }
        n
    }

    /// Waits until every submitted task succeeded, then judges the history.
    async fn settle(&self, within: Duration) -> Verdict {
        let all = self.submitted.clone();
        assert_eventually!(
            within = within,
            self.count(&all, TaskState::Succeeded).await == all.len(),
            "every task succeeded ({} of {})",
            self.count(&all, TaskState::Succeeded).await,
            all.len()
        );
        self.journal.check(&self.submitted, &self.store).await
    }

    async fn stop_all(&mut self) {
        for w in self.workers.drain(..) {
            w.stop.cancel();
            let _ = w.handle.await;
        }
    }
}

/// A claim that runs in Redis but whose reply never reaches the worker leaves tasks running under a worker
/// that does not know it holds them. The next heartbeat hands them back; they run once, and nothing waits
/// for a lease that the living worker keeps renewing.
#[tokio::test]
async fn tasks_of_a_claim_whose_reply_was_lost_are_handed_back_and_run_once() {
    let mut h = Harness::new(RedisServer::start(), Duration::from_secs(3)).await;
    h.start_worker("lost-reply").await;
    // The claim for 8 tasks (worker id, then the count, as the script's arguments go on the wire), not the
    // heartbeat's housekeeping claim of none.
    h.workers[0]
        .proxy
        .lose_reply_to(b"lost-reply\r\n$1\r\n8\r\n");
    let ids = h.submit(6, 50).await;
    let verdict = h.settle(Duration::from_secs(10)).await;
    verdict.assert_clean();
    assert_eq!(verdict.reruns, 0, "{verdict:?}");
    for id in &ids {
        let r = h.record(id).await;
        assert_eq!((r.attempt, r.recoveries, r.retries), (1, 0, 0), "{id}");
    }
    h.stop_all().await;
}

/// A worker cut off from Redis stops its attempts before its lease can expire, so the peer that recovers
/// them never runs one at the same time.
#[tokio::test]
async fn a_partitioned_worker_never_runs_beside_its_replacement() {
    let lease = Duration::from_millis(1500);
    let mut h = Harness::new(RedisServer::start(), lease).await;
    h.start_worker("cut-off").await;
    let ids = h.submit(4, 4000).await;
    assert_eventually!(
        h.count(&ids, TaskState::Running).await == ids.len(),
        "the first worker runs them all"
    );
    h.start_worker("peer").await;
    h.workers[0].proxy.partition();
    // The peer recovers them once the lease runs out, and runs them to the end.
    let verdict = h.settle(Duration::from_secs(20)).await;
    h.workers[0].proxy.heal();
    verdict.assert_clean();
    assert_eq!(verdict.reruns, ids.len(), "{verdict:?}");
    for id in &ids {
        let r = h.record(id).await;
        assert_eq!(r.worker_id.as_deref(), Some("peer"));
        assert_eq!(r.retries, 0, "a lost lease spends no retry");
    }
    h.stop_all().await;
}

/// A Redis stall longer than the lease stops the attempts (the workers cannot tell it from a partition),
/// but Redis does not declare anyone dead for it: the attempts are handed back by their own workers, without
/// a recovery, a retry or a lease expiry counted, and never run twice at once.
#[tokio::test]
async fn a_redis_stall_longer_than_the_lease_is_not_a_worker_failure() {
    let lease = Duration::from_millis(1200);
    let mut h = Harness::new(RedisServer::start(), lease).await;
    h.start_worker("a").await;
    h.start_worker("b").await;
    let ids = h.submit(8, 3000).await;
    assert_eventually!(
        h.count(&ids, TaskState::Running).await == ids.len(),
        "both workers run tasks"
    );
    h.redis.pause();
    tokio::time::sleep(lease * 2).await;
    h.redis.resume();
    let verdict = h.settle(Duration::from_secs(20)).await;
    verdict.assert_clean();
    for id in &ids {
        let r = h.record(id).await;
        assert_eq!((r.recoveries, r.retries), (0, 0), "{id}: {r:?}");
    }
    let stats = h.store.stats().await.unwrap();
    assert_eq!(stats.lease_expiries, 0, "an outage expired leases");
    h.stop_all().await;
}

/// With the default lease, a 10 s Redis stall re-runs nothing: the workers renew as soon as Redis answers,
/// within their self-fencing window.
#[tokio::test]
async fn a_ten_second_redis_stall_re_runs_nothing_with_default_settings() {
    let lease = QueueConfig::default().lease;
    let mut h = Harness::new(RedisServer::start(), lease).await;
    h.start_worker("a").await;
    h.start_worker("b").await;
    let ids = h.submit(6, 12_000).await;
    assert_eventually!(
        h.count(&ids, TaskState::Running).await == ids.len(),
        "both workers run tasks"
    );
    h.redis.pause();
    tokio::time::sleep(Duration::from_secs(10)).await;
    h.redis.resume();
    let verdict = h.settle(Duration::from_secs(30)).await;
    verdict.assert_clean();
    assert_eq!(verdict.reruns, 0, "{verdict:?}");
    for id in &ids {
        assert_eq!(h.record(id).await.recoveries, 0);
    }
    h.stop_all().await;
}

/// With the default lease, a Redis crash and 10 s of downtime re-run nothing either: the server comes back
/// from its append-only file with the leases as they were, its clock shows the silence as an outage, and
/// the workers reconnect and renew within their self-fencing window.
#[tokio::test]
async fn a_ten_second_redis_restart_re_runs_nothing_with_default_settings() {
    let lease = QueueConfig::default().lease;
    let mut h = Harness::new(RedisServer::start_persistent(), lease).await;
    h.start_worker("a").await;
    h.start_worker("b").await;
    let ids = h.submit(6, 14_000).await;
    assert_eventually!(
        h.count(&ids, TaskState::Running).await == ids.len(),
        "both workers run tasks"
    );
    h.redis.kill();
    tokio::time::sleep(Duration::from_secs(10)).await;
    h.redis.restart();
    let verdict = h.settle(Duration::from_secs(40)).await;
    verdict.assert_clean();
    assert_eq!(verdict.reruns, 0, "{verdict:?}");
    for id in &ids {
        let r = h.record(id).await;
        assert_eq!((r.recoveries, r.retries), (0, 0), "{id}: {r:?}");
    }
    h.stop_all().await;
}

/// A full Redis sheds new work but drains what it admitted: a submit is refused whole (no record, no queue
/// entry), while running tasks record their outcomes and queued ones still run.
#[tokio::test]
async fn a_full_redis_refuses_submits_and_keeps_draining() {
    let mut h = Harness::new(RedisServer::start(), Duration::from_secs(4)).await;
    h.start_worker("w").await;
    let ids = h.submit(12, 400).await;
    assert_eventually!(
        h.count(&ids, TaskState::Running).await == 8,
        "eight running, four queued"
    );
    h.redis.set_maxmemory("1");
    let refused = h
        .store
        .submit(&[NewTask::new("test.journal", DEFAULT_QUEUE)])
        .await
        .expect_err("a full Redis takes no new task");
    assert!(refused.is_unavailable(), "{refused}");
    let verdict = h.settle(Duration::from_secs(10)).await;
    verdict.assert_clean();
    assert_eq!(verdict.reruns, 0, "{verdict:?}");
    assert_eq!(h.store.stats().await.unwrap().queues[0].queued, 0);
    h.redis.set_maxmemory("0");
    h.stop_all().await;
}

/// A failover: the replica is promoted, the old primary (still where the workers connect) answers READONLY,
/// then the address moves to the new primary. Outcomes recorded in between are retried, not dropped, and
/// nothing runs twice.
#[tokio::test]
async fn a_failover_loses_no_outcome() {
    let primary = RedisServer::start();
    let replica = RedisServer::start();
    replica.follow(&primary);
    let mut h = Harness::new(primary, Duration::from_secs(4)).await;
    h.start_worker("w").await;
    let ids = h.submit(4, 600).await;
    assert_eventually!(
        h.count(&ids, TaskState::Running).await == ids.len(),
        "running"
    );
    replica.promote();
    h.redis.follow(&replica);
    // The attempts finish while the worker's Redis is read-only.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let new_primary = std::net::SocketAddr::from(([127, 0, 0, 1], replica.port()));
    h.workers[0].proxy.redirect(new_primary);
    // Judge from the new primary.
    let store = store_for(&replica.url(), h.lease).await;
    assert_eventually!(
        within = Duration::from_secs(10),
        {
            let mut done = 0;
            for id in &ids {
                if store.get(id).await.ok().flatten().map(|r| r.state) == Some(TaskState::Succeeded)
                {
                    done += 1;
                }
            }
            done == ids.len()
        },
        "every task succeeded on the new primary"
    );
    let verdict = h.journal.check(&ids, &store).await;
    verdict.assert_clean();
    assert_eq!(verdict.reruns, 0, "{verdict:?}");
    h.stop_all().await;
}

/// A cancellation whose pub/sub message never reached the worker is still honoured: the heartbeat re-reads it.
#[tokio::test]
async fn a_cancellation_whose_message_was_lost_still_stops_the_task() {
    let mut h = Harness::new(RedisServer::start(), Duration::from_secs(3)).await;
    h.start_worker("w").await;
    let ids = h.submit(1, 30_000).await;
    assert_eventually!(h.count(&ids, TaskState::Running).await == 1, "running");
    // What CancelTask writes, without the message it publishes.
    let key = h.store.keys().task(&ids[0]);
    assert_eq!(h.redis.cli(&["HSET", &key, "cancel", "1"]), "1");
    assert_eventually!(
        within = Duration::from_secs(3),
        h.record(&ids[0]).await.state == TaskState::Cancelled,
        "the task was cancelled"
    );
    h.stop_all().await;
}

/// The worker's own deadline is counted from renewals: with Redis gone for good, attempts stop within the
/// lease, and the worker is unready.
#[tokio::test]
async fn without_redis_a_worker_stops_its_attempts_within_the_lease() {
    let lease = Duration::from_millis(1500);
    let mut h = Harness::new(RedisServer::start(), lease).await;
    h.start_worker("w").await;
    let ids = h.submit(2, 60_000).await;
    assert_eventually!(h.count(&ids, TaskState::Running).await == 2, "running");
    let cut_at = std::time::Instant::now();
    h.workers[0].proxy.partition();
    let journal = h.journal.clone();
    assert_eventually!(
        within = lease * 2,
        journal
            .entries()
            .iter()
            .filter(|e| matches!(
                e,
                redline_testkit::Entry::End {
                    finished: false,
                    ..
                }
            ))
            .count()
            == 2,
        "the attempts stopped"
    );
    assert!(
        cut_at.elapsed() < lease,
        "stopped after {:?}",
        cut_at.elapsed()
    );
    h.workers[0].proxy.heal();
    h.stop_all().await;
}
