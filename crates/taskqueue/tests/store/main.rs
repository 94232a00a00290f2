//! The task store against a real, private redis-server: every transition, including the races.

use std::time::Duration;

use fred::prelude::*;
use redline_taskqueue::connect::{self, RedisOptions};
use redline_taskqueue::*;
use redline_testkit::RedisServer;
use serde_json::json;

struct Fixture {
    redis: RedisServer,
    store: TaskStore,
}

async fn fixture_with(config: QueueConfig) -> Fixture {
    let redis = RedisServer::start();
    let client = connect::client(&redis.url(), &RedisOptions::default()).expect("client");
    client.wait_for_connect().await.expect("connect");
    let store = TaskStore::new(client, config);
    Fixture { redis, store }
}

async fn fixture() -> Fixture {
    fixture_with(QueueConfig::default()).await
}

fn q() -> Vec<String> {
    vec![DEFAULT_QUEUE.to_owned()]
}

async fn submit_one(store: &TaskStore, task: NewTask) -> Submitted {
    store.submit(&[task]).await.expect("submit").remove(0)
}

async fn register(store: &TaskStore, wid: &str) {
    assert!(
        store
            .heartbeat(
                wid,
                HeartbeatMode::Register,
                &[],
                &[("queues", DEFAULT_QUEUE.to_owned())]
            )
            .await
            .expect("register")
            .alive
    );
}

/// Renews `wid`'s lease every 20 ms for `period`: a live peer, so Redis is seen serving meanwhile (lease
/// time only runs while some worker reaches Redis).
async fn keep_alive(store: &TaskStore, wid: &str, period: Duration) {
    let end = tokio::time::Instant::now() + period;
    while tokio::time::Instant::now() < end {
        let hb = store
            .heartbeat(wid, HeartbeatMode::Renew, &[], &[])
            .await
            .expect("renew");
        assert!(hb.alive, "{wid} lost its lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn claim(store: &TaskStore, wid: &str, max: usize) -> Vec<ClaimedTask> {
    match store.claim(wid, &q(), max).await.expect("claim") {
        Claim::Tasks { tasks, .. } => tasks,
        Claim::LeaseLost => panic!("lease lost"),
    }
}

/// Claims task `id` as worker `w` and fails it retryably, `attempts` times in a row (error `boom <attempt>`,
/// no backoff): every attempt but the last must schedule a retry, the last must fail the task for good.
/// `inspect` sees each claimed attempt.
async fn fail_every_attempt(
    store: &TaskStore,
    id: &str,
    attempts: u32,
    inspect: impl Fn(u32, &ClaimedTask),
) {
    for attempt in 1..=attempts {
        let c = claim(store, "w", 1).await;
        assert_eq!(c.len(), 1, "attempt {attempt}");
        inspect(attempt, &c[0]);
        let r = store
            .complete(
                "w",
                &[Completion {
                    id: id.to_owned(),
                    fence: c[0].fence,
                    outcome: Outcome::Retry {
                        error: format!("boom {attempt}"),
                        delay: Duration::ZERO,
                    },
                }],
            )
            .await
            .unwrap();
        let expected = if attempt < attempts {
            TaskState::Scheduled
        } else {
            TaskState::Failed
        };
        assert_eq!(r, vec![Completed::Applied(expected)], "attempt {attempt}");
    }
}

#[tokio::test]
async fn submit_then_get_and_unknown_ids_are_absent() {
    let f = fixture().await;
    let mut t = NewTask::new("redline.echo", DEFAULT_QUEUE);
    t.kwargs = json!({"x": 1});
    let s = submit_one(&f.store, t.clone()).await;
    assert_eq!(
        s,
        Submitted {
            id: t.id.clone(),
            state: TaskState::Queued,
            duplicate: false
        }
    );
    let rec = f.store.get(&t.id).await.expect("get").expect("exists");
    assert_eq!(rec.state, TaskState::Queued);
    assert_eq!(rec.kwargs, json!({"x": 1}));
    assert_eq!(rec.priority, 5);
    assert_eq!(rec.max_retries, 3);
    assert!(rec.submitted_us > 0);
    assert_eq!(f.store.get("no-such-task").await.expect("get"), None);
}

#[tokio::test]
async fn claim_then_complete_records_the_result() {
    let f = fixture().await;
    register(&f.store, "w1").await;
    let t = NewTask::new("redline.noop", DEFAULT_QUEUE);
    submit_one(&f.store, t.clone()).await;
    let claimed = claim(&f.store, "w1", 10).await;
    assert_eq!(claimed.len(), 1);
    assert_eq!((claimed[0].attempt, claimed[0].fence), (1, 1));
    let rec = f.store.get(&t.id).await.unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.worker_id.as_deref()),
        (TaskState::Running, Some("w1"))
    );

    let done = f
        .store
        .complete(
            "w1",
            &[Completion {
                id: t.id.clone(),
                fence: 1,
                outcome: Outcome::Succeeded(json!({"ok": true})),
            }],
        )
        .await
        .unwrap();
    assert_eq!(done, vec![Completed::Applied(TaskState::Succeeded)]);
    let rec = f.store.get(&t.id).await.unwrap().unwrap();
    assert_eq!(rec.state, TaskState::Succeeded);
    assert_eq!(rec.result, Some(json!({"ok": true})));
    assert!(rec.completed_us.is_some());
    let ttl: i64 = f
        .store
        .client()
        .ttl(f.store.keys().task(&t.id))
        .await
        .unwrap();
    assert!(ttl > 86_000 && ttl <= 86_400, "result ttl {ttl}");
    // The same attempt reporting again (its first reply was lost, or it is confused) changes nothing: the
    // reply says what was recorded, and nothing is counted stale.
    let again = f
        .store
        .complete(
            "w1",
            &[Completion {
                id: t.id.clone(),
                fence: 1,
                outcome: Outcome::Failed("late".into()),
            }],
        )
        .await
        .unwrap();
    assert_eq!(again, vec![Completed::Applied(TaskState::Succeeded)]);
    let rec = f.store.get(&t.id).await.unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.result),
        (TaskState::Succeeded, Some(json!({"ok": true})))
    );
    assert_eq!(f.store.stats().await.unwrap().stale_completions, 0);
}

#[tokio::test]
async fn two_workers_competing_for_one_task_exactly_one_gets_it() {
    let f = fixture().await;
    for round in 0..50 {
        let (a, b) = (format!("a{round}"), format!("b{round}"));
        register(&f.store, &a).await;
        register(&f.store, &b).await;
        submit_one(&f.store, NewTask::new("redline.noop", DEFAULT_QUEUE)).await;
        let (ta, tb) = tokio::join!(claim(&f.store, &a, 1), claim(&f.store, &b, 1));
        assert_eq!(ta.len() + tb.len(), 1, "round {round}");
    }
}

#[tokio::test]
async fn a_lost_lease_recovers_the_task_and_rejects_the_late_completion() {
    let f = fixture_with(QueueConfig {
        lease: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    register(&f.store, "slow").await;
    let t = NewTask::new("redline.noop", DEFAULT_QUEUE);
    submit_one(&f.store, t.clone()).await;
    let first = claim(&f.store, "slow", 1).await;
    assert_eq!(first[0].fence, 1);

    // "slow" stops heartbeating while "fast" keeps renewing; after its lease, a claim of "fast" recovers
    // the task.
    register(&f.store, "fast").await;
    keep_alive(&f.store, "fast", Duration::from_millis(400)).await;
    let second = claim(&f.store, "fast", 1).await;
    assert_eq!(second.len(), 1);
    assert_eq!(
        (second[0].id.as_str(), second[0].fence, second[0].attempt),
        (t.id.as_str(), 2, 2)
    );
    let rec = f.store.get(&t.id).await.unwrap().unwrap();
    assert_eq!(rec.recoveries, 1);
    assert_eq!(rec.retries, 0, "a lost lease does not use the retry budget");

    // The first worker finally finishes: rejected, and counted.
    let late = f
        .store
        .complete(
            "slow",
            &[Completion {
                id: t.id.clone(),
                fence: 1,
                outcome: Outcome::Succeeded(json!("old")),
            }],
        )
        .await
        .unwrap();
    assert_eq!(late, vec![Completed::Stale]);
    assert!(
        !f.store
            .heartbeat("slow", HeartbeatMode::Renew, &[], &[])
            .await
            .unwrap()
            .alive,
        "lost lease is reported"
    );
    assert_eq!(
        f.store.claim("slow", &q(), 1).await.unwrap(),
        Claim::LeaseLost
    );

    let ok = f
        .store
        .complete(
            "fast",
            &[Completion {
                id: t.id.clone(),
                fence: 2,
                outcome: Outcome::Succeeded(json!("new")),
            }],
        )
        .await
        .unwrap();
    assert_eq!(ok, vec![Completed::Applied(TaskState::Succeeded)]);
    assert_eq!(
        f.store.get(&t.id).await.unwrap().unwrap().result,
        Some(json!("new"))
    );
    let stats = f.store.stats().await.unwrap();
    assert_eq!(stats.stale_completions, 1);
    assert_eq!(stats.lease_expiries, 1);
    assert_eq!(stats.queues[0].recovered, 1);
    assert_eq!(stats.queues[0].running, 0);
}

#[tokio::test]
async fn retries_exhausted_fail_into_dead_letter_then_retry_task_succeeds() {
    let f = fixture().await;
    register(&f.store, "w").await;
    let mut t = NewTask::new("redline.fail", DEFAULT_QUEUE);
    t.max_retries = 2;
    submit_one(&f.store, t.clone()).await;
    fail_every_attempt(&f.store, &t.id, 3, |attempt, c| {
        assert_eq!(c.attempt, attempt);
    })
    .await;
    let rec = f.store.get(&t.id).await.unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.error.as_deref(), rec.retries),
        (TaskState::Failed, Some("boom 3"), 2)
    );
    let dead = f
        .store
        .list(
            &ListFilter {
                dead_letter: true,
                ..Default::default()
            },
            10,
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        dead.tasks.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        vec![t.id.as_str()]
    );

    assert_eq!(f.store.retry(&t.id).await.unwrap(), RetryOutcome::Requeued);
    assert_eq!(
        f.store.retry(&t.id).await.unwrap(),
        RetryOutcome::NotRetryable(TaskState::Queued)
    );
    let c = claim(&f.store, "w", 1).await;
    let r = f
        .store
        .complete(
            "w",
            &[Completion {
                id: t.id.clone(),
                fence: c[0].fence,
                outcome: Outcome::Succeeded(json!(1)),
            }],
        )
        .await
        .unwrap();
    assert_eq!(r, vec![Completed::Applied(TaskState::Succeeded)]);
    let dead = f
        .store
        .list(
            &ListFilter {
                dead_letter: true,
                ..Default::default()
            },
            10,
            None,
        )
        .await
        .unwrap();
    assert!(dead.tasks.is_empty());
    assert_eq!(f.store.retry("nope").await.unwrap(), RetryOutcome::NotFound);
}

#[tokio::test]
async fn non_retryable_errors_fail_at_once() {
    let f = fixture().await;
    register(&f.store, "w").await;
    let t = NewTask::new("redline.fail", DEFAULT_QUEUE);
    submit_one(&f.store, t.clone()).await;
    let c = claim(&f.store, "w", 1).await;
    let r = f
        .store
        .complete(
            "w",
            &[Completion {
                id: t.id.clone(),
                fence: c[0].fence,
                outcome: Outcome::Failed("bad input".into()),
            }],
        )
        .await
        .unwrap();
    assert_eq!(r, vec![Completed::Applied(TaskState::Failed)]);
}

#[tokio::test]
async fn idempotent_resubmit_returns_the_original_task() {
    let f = fixture().await;
    let mut a = NewTask::new("redline.noop", DEFAULT_QUEUE);
    a.idempotency_key = Some("order-42".into());
    let mut b = NewTask::new("redline.noop", DEFAULT_QUEUE);
    b.idempotency_key = Some("order-42".into());
    let first = submit_one(&f.store, a.clone()).await;
    let second = submit_one(&f.store, b.clone()).await;
    assert!(!first.duplicate);
    assert_eq!(
        second,
        Submitted {
            id: a.id.clone(),
            state: TaskState::Queued,
            duplicate: true
        }
    );
    assert_eq!(f.store.get(&b.id).await.unwrap(), None);
    // Within one batch too.
    let mut c = NewTask::new("redline.noop", DEFAULT_QUEUE);
    c.idempotency_key = Some("k2".into());
    let mut d = c.clone();
    d.id = "other".into();
    let both = f.store.submit(&[c.clone(), d]).await.unwrap();
    assert_eq!(
        (both[1].id.as_str(), both[1].duplicate),
        (c.id.as_str(), true)
    );
}

#[tokio::test]
async fn eta_tasks_wait_in_redis_and_start_in_due_order() {
    let f = fixture().await;
    register(&f.store, "w").await;
    let mut ids = Vec::new();
    for delay in [300u64, 100, 200] {
        let mut t = NewTask::new("redline.noop", DEFAULT_QUEUE);
        t.countdown = Some(Duration::from_millis(delay));
        assert_eq!(
            submit_one(&f.store, t.clone()).await.state,
            TaskState::Scheduled
        );
        ids.push((delay, t.id));
    }
    ids.sort();
    match f.store.claim("w", &q(), 10).await.unwrap() {
        Claim::Tasks { tasks, next_wake } => {
            assert!(tasks.is_empty());
            let wake = next_wake.expect("a wake-up time");
            assert!(
                wake <= Duration::from_millis(100) && wake >= Duration::from_millis(50),
                "{wake:?}"
            );
        }
        Claim::LeaseLost => panic!(),
    }
    tokio::time::sleep(Duration::from_millis(350)).await;
    let claimed: Vec<String> = claim(&f.store, "w", 10)
        .await
        .into_iter()
        .map(|c| c.id)
        .collect();
    let expected: Vec<String> = ids.into_iter().map(|(_, id)| id).collect();
    assert_eq!(claimed, expected);
}

#[tokio::test]
async fn higher_priority_runs_first_and_fifo_within_a_priority() {
    let f = fixture().await;
    register(&f.store, "w").await;
    let mut order = Vec::new();
    for (i, prio) in [1u8, 9, 5, 9, 1].into_iter().enumerate() {
        let mut t = NewTask::new("redline.noop", DEFAULT_QUEUE);
        t.priority = prio;
        t.id = format!("t{i}-p{prio}");
        order.push(t.clone());
        submit_one(&f.store, t).await;
    }
    let claimed: Vec<String> = claim(&f.store, "w", 10)
        .await
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(claimed, ["t1-p9", "t3-p9", "t2-p5", "t0-p1", "t4-p1"]);
}

#[tokio::test]
async fn cancel_in_every_state() {
    let f = fixture().await;
    register(&f.store, "w").await;
    let queued = NewTask::new("redline.noop", DEFAULT_QUEUE);
    submit_one(&f.store, queued.clone()).await;
    assert_eq!(
        f.store.cancel(&queued.id).await.unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(
        f.store.get(&queued.id).await.unwrap().unwrap().state,
        TaskState::Cancelled
    );

    let mut scheduled = NewTask::new("redline.noop", DEFAULT_QUEUE);
    scheduled.countdown = Some(Duration::from_secs(60));
    submit_one(&f.store, scheduled.clone()).await;
    assert_eq!(
        f.store.cancel(&scheduled.id).await.unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(f.store.stats().await.unwrap().queues[0].scheduled, 0);

    // Nothing cancelled is ever claimed.
    assert!(claim(&f.store, "w", 10).await.is_empty());

    let running = NewTask::new("redline.noop", DEFAULT_QUEUE);
    submit_one(&f.store, running.clone()).await;
    let c = claim(&f.store, "w", 1).await;
    assert_eq!(
        f.store.cancel(&running.id).await.unwrap(),
        CancelOutcome::Requested
    );
    assert!(
        f.store
            .get(&running.id)
            .await
            .unwrap()
            .unwrap()
            .cancel_requested
    );
    let r = f
        .store
        .complete(
            "w",
            &[Completion {
                id: running.id.clone(),
                fence: c[0].fence,
                outcome: Outcome::Cancelled("cancelled".into()),
            }],
        )
        .await
        .unwrap();
    assert_eq!(r, vec![Completed::Applied(TaskState::Cancelled)]);
    assert_eq!(
        f.store.cancel(&running.id).await.unwrap(),
        CancelOutcome::AlreadyEnded(TaskState::Cancelled)
    );
    assert_eq!(
        f.store.cancel("missing").await.unwrap(),
        CancelOutcome::NotFound
    );
}

#[tokio::test]
async fn shutdown_requeue_does_not_use_an_attempt() {
    let f = fixture().await;
    register(&f.store, "w").await;
    let t = NewTask::new("redline.noop", DEFAULT_QUEUE);
    submit_one(&f.store, t.clone()).await;
    let c = claim(&f.store, "w", 1).await;
    let r = f
        .store
        .complete(
            "w",
            &[Completion {
                id: t.id.clone(),
                fence: c[0].fence,
                outcome: Outcome::Requeue,
            }],
        )
        .await
        .unwrap();
    assert_eq!(r, vec![Completed::Applied(TaskState::Queued)]);
    let again = claim(&f.store, "w", 1).await;
    assert_eq!((again[0].attempt, again[0].fence), (1, 2));
}

#[tokio::test]
async fn list_filters_pages_and_cleanup_removes_old_finished_tasks() {
    let f = fixture().await;
    register(&f.store, "w").await;
    let mut ids = Vec::new();
    for i in 0..25 {
        let mut t = NewTask::new(
            if i % 2 == 0 {
                "redline.noop"
            } else {
                "redline.echo"
            },
            DEFAULT_QUEUE,
        );
        t.id = format!("task-{i:02}");
        ids.push(t.id.clone());
        submit_one(&f.store, t).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = f
            .store
            .list(&ListFilter::default(), 10, cursor)
            .await
            .unwrap();
        seen.extend(page.tasks.iter().map(|t| t.id.clone()));
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);
    let echo = f
        .store
        .list(
            &ListFilter {
                name: Some("redline.echo".into()),
                ..Default::default()
            },
            100,
            None,
        )
        .await
        .unwrap();
    assert_eq!(echo.tasks.len(), 12);

    let c = claim(&f.store, "w", 3).await;
    let done: Vec<Completion> = c
        .iter()
        .map(|c| Completion {
            id: c.id.clone(),
            fence: c.fence,
            outcome: Outcome::Succeeded(json!(null)),
        })
        .collect();
    f.store.complete("w", &done).await.unwrap();
    let succeeded = f
        .store
        .list(
            &ListFilter {
                states: vec![TaskState::Succeeded],
                ..Default::default()
            },
            100,
            None,
        )
        .await
        .unwrap();
    assert_eq!(succeeded.tasks.len(), 3);
    assert_eq!(
        f.store.cleanup(Duration::from_secs(3600)).await.unwrap(),
        0,
        "tasks that ended just now are younger than an hour"
    );
    assert_eq!(f.store.cleanup(Duration::ZERO).await.unwrap(), 3);
    assert_eq!(f.store.get(&c[0].id).await.unwrap(), None);
    assert_eq!(
        f.store
            .list(&ListFilter::default(), 100, None)
            .await
            .unwrap()
            .tasks
            .len(),
        22
    );
}

#[tokio::test]
async fn stats_count_tasks_per_queue_and_the_oldest_age() {
    let f = fixture().await;
    register(&f.store, "w").await;
    for _ in 0..3 {
        submit_one(&f.store, NewTask::new("redline.noop", DEFAULT_QUEUE)).await;
    }
    submit_one(&f.store, NewTask::new("redline.noop", "other")).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    claim(&f.store, "w", 1).await;
    let s = f.store.stats().await.unwrap();
    let main = s.queues.iter().find(|q| q.queue == DEFAULT_QUEUE).unwrap();
    assert_eq!((main.queued, main.running), (2, 1));
    assert!(main.oldest_queued_age.unwrap() >= Duration::from_millis(25));
    let other = s.queues.iter().find(|q| q.queue == "other").unwrap();
    assert_eq!(other.queued, 1);
    assert_eq!(s.workers, 1);
}

#[tokio::test]
async fn calls_fail_fast_while_redis_is_down_and_recover_by_themselves() {
    let mut f = fixture().await;
    f.redis.kill();
    let start = std::time::Instant::now();
    let err = f
        .store
        .submit(&[NewTask::new("redline.noop", DEFAULT_QUEUE)])
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    f.redis.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if f.store.ping().await.is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no recovery within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        submit_one(&f.store, NewTask::new("redline.noop", DEFAULT_QUEUE))
            .await
            .state,
        TaskState::Queued
    );
}

/// The listing index keeps one entry per submit call: pages continue inside a batch and across calls, newest
/// first, and a token from elsewhere is refused.
#[tokio::test]
async fn listing_pages_through_batches_newest_first() {
    let f = fixture().await;
    let mut expected = Vec::new();
    let batch: Vec<NewTask> = (0..25)
        .map(|i| {
            let mut t = NewTask::new("redline.noop", DEFAULT_QUEUE);
            t.id = format!("batch-{i:02}");
            t
        })
        .collect();
    expected.extend(batch.iter().map(|t| t.id.clone()));
    f.store.submit(&batch).await.unwrap();
    for i in 0..5 {
        let mut t = NewTask::new("redline.echo", DEFAULT_QUEUE);
        t.id = format!("single-{i}");
        expected.push(t.id.clone());
        submit_one(&f.store, t).await;
    }
    expected.reverse();

    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = f
            .store
            .list(&ListFilter::default(), 7, cursor)
            .await
            .unwrap();
        pages += 1;
        seen.extend(page.tasks.iter().map(|t| t.id.clone()));
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, expected);
    assert!(pages >= 5, "{pages} pages of 7 for 30 tasks");

    let bad = f
        .store
        .list(&ListFilter::default(), 7, Some(Cursor::new("17:abc")))
        .await;
    assert!(matches!(bad, Err(StoreError::BadCursor)), "{bad:?}");
}

/// A task on the default budget and time limit stores neither (a smaller record) and still gets both: the
/// claim reports them and the budget is enforced in the completion script.
#[tokio::test]
async fn default_budget_and_limit_are_not_stored_but_enforced() {
    let f = fixture().await;
    register(&f.store, "w").await;
    let t = NewTask::new("redline.fail", DEFAULT_QUEUE);
    assert_eq!(t.max_retries, redline_catalog::DEFAULT_MAX_RETRIES);
    submit_one(&f.store, t.clone()).await;
    let key = format!("{{redline}}:t:{}", t.id);
    assert_eq!(f.redis.cli(&["HEXISTS", &key, "max_retries"]), "0");
    assert_eq!(f.redis.cli(&["HEXISTS", &key, "limit"]), "0");
    let rec = f.store.get(&t.id).await.unwrap().unwrap();
    assert_eq!(
        (rec.max_retries, rec.time_limit),
        (
            redline_catalog::DEFAULT_MAX_RETRIES,
            redline_catalog::DEFAULT_TIME_LIMIT
        )
    );
    let budget = redline_catalog::DEFAULT_MAX_RETRIES + 1;
    fail_every_attempt(&f.store, &t.id, budget, |_, c| {
        assert_eq!(
            (c.max_retries, c.time_limit),
            (
                redline_catalog::DEFAULT_MAX_RETRIES,
                redline_catalog::DEFAULT_TIME_LIMIT
            )
        );
    })
    .await;
}

/// TaskService's retention governs records that workers finish: a worker's store keeps the default result TTL
/// of a day, yet the record of the task it completes expires after the 60 s TaskService set.
#[tokio::test]
async fn the_retention_task_service_sets_governs_completions() {
    let f = fixture().await;
    let client = connect::client(&f.redis.url(), &RedisOptions::default()).unwrap();
    client.wait_for_connect().await.unwrap();
    let service = TaskStore::new(
        client,
        QueueConfig {
            result_ttl: Duration::from_secs(60),
            ..QueueConfig::default()
        },
    );
    service.publish_settings().await.unwrap();
    let t = submit_one(&f.store, NewTask::new("redline.noop", DEFAULT_QUEUE)).await;
    register(&f.store, "w1").await;
    let claimed = claim(&f.store, "w1", 1).await;
    let outcomes = f
        .store
        .complete(
            "w1",
            &[Completion {
                id: claimed[0].id.clone(),
                fence: claimed[0].fence,
                outcome: Outcome::Succeeded(serde_json::Value::Null),
            }],
        )
        .await
        .unwrap();
    assert_eq!(outcomes, [Completed::Applied(TaskState::Succeeded)]);
    let ttl: i64 = f
        .redis
        .cli(&["TTL", &f.store.keys().task(&t.id)])
        .parse()
        .unwrap();
    assert!((1..=60).contains(&ttl), "ttl {ttl}");
}

/// What Redis has under a worker and what the worker says it holds are reconciled by every heartbeat:
/// unknown tasks go back to their queue unspent, held tasks that moved on are named, and a cancellation is
/// re-delivered.
#[tokio::test]
async fn heartbeats_reconcile_what_a_worker_holds() {
    let f = fixture().await;
    register(&f.store, "w").await;
    let ids: Vec<String> = f
        .store
        .submit(
            &(0..3)
                .map(|_| NewTask::new("redline.noop", DEFAULT_QUEUE))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    let claimed = claim(&f.store, "w", 3).await;
    assert_eq!(claimed.len(), 3);
    let fence = |id: &str| claimed.iter().find(|c| c.id == id).unwrap().fence;
    // The worker knows of the first (cancelled meanwhile) and of the second under an old fence; the third's
    // claim reply never reached it.
    f.redis
        .cli(&["HSET", &f.store.keys().task(&ids[0]), "cancel", "1"]);
    let held = vec![
        (ids[0].clone(), fence(&ids[0])),
        (ids[1].clone(), fence(&ids[1]) + 7),
    ];
    let hb = f
        .store
        .heartbeat("w", HeartbeatMode::Renew, &held, &[])
        .await
        .unwrap();
    assert!(hb.alive);
    assert_eq!(hb.cancel, vec![ids[0].clone()]);
    assert_eq!(hb.stop, vec![ids[1].clone()]);
    assert_eq!(hb.given_back, 1);
    let third = f.store.get(&ids[2]).await.unwrap().unwrap();
    assert_eq!(
        (
            third.state,
            third.attempt,
            third.recoveries,
            third.worker_id
        ),
        (TaskState::Queued, 0, 0, None)
    );
    let again = claim(&f.store, "w", 3).await;
    assert_eq!(
        again.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        vec![ids[2].as_str()],
        "the handed-back task is claimable again, first attempt"
    );
    assert_eq!(again[0].attempt, 1);
}

/// A worker that leaves hands back whatever Redis still has under it, instead of leaving it to a lease that
/// no one will ever look at again.
#[tokio::test]
async fn leaving_hands_back_what_the_worker_still_holds() {
    let f = fixture().await;
    register(&f.store, "w").await;
    let t = NewTask::new("redline.noop", DEFAULT_QUEUE);
    submit_one(&f.store, t.clone()).await;
    assert_eq!(claim(&f.store, "w", 1).await.len(), 1);
    let hb = f
        .store
        .heartbeat("w", HeartbeatMode::Leave, &[], &[])
        .await
        .unwrap();
    assert_eq!(hb.given_back, 1);
    let rec = f.store.get(&t.id).await.unwrap().unwrap();
    assert_eq!((rec.state, rec.attempt), (TaskState::Queued, 0));
    assert!(f.store.workers().await.unwrap().is_empty());
    let key: i64 = f
        .store
        .client()
        .exists(f.store.keys().worker_active("w"))
        .await
        .unwrap();
    assert_eq!(key, 0, "the active set is gone");
}

/// A worker whose lease ran out is not alive, even before a peer reaps it.
#[tokio::test]
async fn only_workers_with_a_running_lease_are_listed_and_counted() {
    let f = fixture_with(QueueConfig {
        lease: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    register(&f.store, "dead").await;
    register(&f.store, "alive").await;
    keep_alive(&f.store, "alive", Duration::from_millis(500)).await;
    let listed: Vec<String> = f
        .store
        .workers()
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.id)
        .collect();
    assert_eq!(listed, vec!["alive".to_owned()]);
    assert_eq!(f.store.stats().await.unwrap().workers, 1);
    assert_eq!(f.store.live_workers().await.unwrap(), 1);
}

/// A full Redis refuses a submission whole and lets the queue drain: claims and completions still run.
#[tokio::test]
async fn a_full_redis_refuses_submits_atomically_and_still_drains() {
    let f = fixture().await;
    register(&f.store, "w").await;
    let queued = NewTask::new("redline.noop", DEFAULT_QUEUE);
    submit_one(&f.store, queued.clone()).await;
    f.redis.set_maxmemory("1");
    let refused = NewTask::new("redline.noop", DEFAULT_QUEUE);
    let err = f
        .store
        .submit(std::slice::from_ref(&refused))
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(f.store.get(&refused.id).await.unwrap().is_none());
    let c = claim(&f.store, "w", 1).await;
    assert_eq!(c.len(), 1);
    let done = f
        .store
        .complete(
            "w",
            &[Completion {
                id: queued.id.clone(),
                fence: c[0].fence,
                outcome: Outcome::Succeeded(json!(1)),
            }],
        )
        .await
        .unwrap();
    assert_eq!(done, vec![Completed::Applied(TaskState::Succeeded)]);
}

/// One batch of completions gives many dead-letter entries the same score: paging walks them all, each
/// once, and a cursor whose task left the index continues where it was.
#[tokio::test]
async fn dead_letter_pages_through_entries_that_share_a_score() {
    let f = fixture().await;
    register(&f.store, "w").await;
    let tasks: Vec<NewTask> = (0..250)
        .map(|i| {
            let mut t = NewTask::new("redline.fail", DEFAULT_QUEUE);
            t.id = format!("dead-{i:03}");
            t
        })
        .collect();
    f.store.submit(&tasks).await.unwrap();
    let claimed = claim(&f.store, "w", 250).await;
    let outcomes: Vec<Completion> = claimed
        .iter()
        .map(|c| Completion {
            id: c.id.clone(),
            fence: c.fence,
            outcome: Outcome::Failed("boom".into()),
        })
        .collect();
    f.store.complete("w", &outcomes).await.unwrap();
    // The same failure time for all: one script call, one clock reading.
    let scores: Vec<String> = f
        .redis
        .cli(&["ZRANGE", &f.store.keys().dead(), "0", "-1", "WITHSCORES"])
        .lines()
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    assert!(scores.windows(2).all(|w| w[0] == w[1]), "{scores:?}");

    let dead = ListFilter {
        dead_letter: true,
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = tokio::time::timeout(
            Duration::from_secs(5),
            f.store.list(&dead, 40, cursor.take()),
        )
        .await
        .expect("a page within 5 s")
        .unwrap();
        seen.extend(page.tasks.iter().map(|t| t.id.clone()));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
        assert!(seen.len() <= 250, "pages repeat entries");
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!((seen.len(), sorted.len()), (250, 250));

    // A cursor at an entry that has since left the index continues right after it.
    let first = f.store.list(&dead, 10, None).await.unwrap();
    let last = first.tasks.last().unwrap().id.clone();
    assert_eq!(f.store.retry(&last).await.unwrap(), RetryOutcome::Requeued);
    let after = f.store.list(&dead, 10, first.next).await.unwrap();
    assert_eq!(after.tasks[0].id, seen[10]);
}

/// Finished records are bounded by count as well as by TTL: past `max_finished` the oldest go, record and
/// index entries alike, inside the completions themselves.
#[tokio::test]
async fn finished_records_beyond_the_cap_are_deleted_oldest_first() {
    let f = fixture_with(QueueConfig {
        max_finished: 5,
        ..Default::default()
    })
    .await;
    f.store.publish_settings().await.unwrap();
    register(&f.store, "w").await;
    let mut ids = Vec::new();
    for _ in 0..8 {
        let t = NewTask::new("redline.noop", DEFAULT_QUEUE);
        submit_one(&f.store, t.clone()).await;
        let c = claim(&f.store, "w", 1).await;
        f.store
            .complete(
                "w",
                &[Completion {
                    id: t.id.clone(),
                    fence: c[0].fence,
                    outcome: Outcome::Succeeded(json!(1)),
                }],
            )
            .await
            .unwrap();
        ids.push(t.id);
        // Distinct completion times, so "oldest" is well defined.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    for (i, id) in ids.iter().enumerate() {
        let kept = f.store.get(id).await.unwrap().is_some();
        assert_eq!(kept, i >= 3, "task {i}");
    }
    let done: u64 = f.store.client().zcard(f.store.keys().done()).await.unwrap();
    assert_eq!(done, 5);
}

/// The listing index is bounded in ids, whatever the batch size: past 2 × `max_finished` ids the oldest
/// entries go, and its count of ids stays exact. (Capped in entries, 100,000 entries of batches held 1.6
/// million ids; entries of at most INDEX_IDS_PER_ENTRY ids keep what is dropped small.)
#[tokio::test]
async fn the_listing_index_is_bounded_in_ids_whatever_the_batch_size() {
    let f = fixture_with(QueueConfig {
        max_finished: 200,
        ..Default::default()
    })
    .await;
    f.store.publish_settings().await.unwrap();
    for _ in 0..10 {
        let batch: Vec<NewTask> = (0..1000)
            .map(|_| NewTask::new("redline.noop", DEFAULT_QUEUE))
            .collect();
        f.store.submit(&batch).await.unwrap();
    }
    let entries: Vec<(String, Vec<String>)> = f
        .store
        .client()
        .xrange(f.store.keys().all(), "-", "+", None)
        .await
        .unwrap();
    let ids: usize = entries
        .iter()
        .map(|(_, fields)| fields[1].split(' ').count())
        .sum();
    assert!(ids <= 2 * 200, "{ids} ids in {} entries", entries.len());
    assert!(
        ids > 2 * 200 - INDEX_IDS_PER_ENTRY as usize,
        "the newest tasks stay listed: {ids}"
    );
    let counted: usize = f
        .store
        .client()
        .get(f.store.keys().all_count())
        .await
        .unwrap();
    assert_eq!(counted, ids);
    // Still newest first and complete for what it keeps.
    let page = f
        .store
        .list(&ListFilter::default(), 50, None)
        .await
        .unwrap();
    assert_eq!(page.tasks.len(), 50);
}

/// Queues are created by use; past the cap a new name is refused and nothing of that call is stored, while
/// known queues keep working.
#[tokio::test]
async fn a_new_queue_past_the_cap_is_refused_whole() {
    let f = fixture_with(QueueConfig {
        max_queues: 2,
        ..Default::default()
    })
    .await;
    f.store.publish_settings().await.unwrap();
    submit_one(&f.store, NewTask::new("redline.noop", "a")).await;
    submit_one(&f.store, NewTask::new("redline.noop", "b")).await;
    let known = NewTask::new("redline.noop", "a");
    let third = NewTask::new("redline.noop", "c");
    let err = f
        .store
        .submit(&[known.clone(), third.clone()])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::TooManyQueues { max: 2 }),
        "{err:?}"
    );
    assert!(f.store.get(&known.id).await.unwrap().is_none());
    assert!(f.store.get(&third.id).await.unwrap().is_none());
    submit_one(&f.store, known).await;
}
