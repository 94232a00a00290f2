//! Crash tests with real processes: workers are SIGKILLed mid-task, Redis is killed and restarted with AOF.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redline_taskqueue::*;
use redline_testkit::RedisServer;
use serde_json::json;

/// A worker process; `lease` `None` keeps the default.
fn spawn_worker(url: &str, id: &str, lease: Option<&str>) -> Child {
    Command::new(env!("CARGO_BIN_EXE_redline-worker"))
        .args(["--redis-url", url, "--worker-id", id, "--concurrency", "4"])
        .args(lease.map(|l| ["--lease", l]).into_iter().flatten())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("worker binary")
}

async fn store(url: &str, lease: Duration) -> TaskStore {
    redline_testkit::task_store(url, lease).await
}

fn sleep_task(seconds: f64) -> NewTask {
    let mut t = NewTask::new("redline.sleep", DEFAULT_QUEUE);
    t.kwargs = json!({ "seconds": seconds });
    t
}

async fn wait_for<F: AsyncFnMut() -> bool>(within: Duration, what: &str, mut f: F) {
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_sigkilled_workers_task_runs_again_elsewhere_within_15_s_with_default_settings() {
    let redis = RedisServer::start();
    let url = redis.url();
    let store = store(&url, Duration::from_secs(14)).await;
    let mut a = spawn_worker(&url, "victim", None);
    let mut b = spawn_worker(&url, "survivor", None);
    wait_for(Duration::from_secs(10), "two workers", async || {
        store.workers().await.map(|w| w.len() == 2).unwrap_or(false)
    })
    .await;

    // Enough tasks that both workers hold some.
    let tasks: Vec<NewTask> = (0..8).map(|_| sleep_task(2.0)).collect();
    store.submit(&tasks).await.unwrap();
    wait_for(Duration::from_secs(5), "all running", async || {
        store
            .stats()
            .await
            .map(|s| s.queues[0].running == 8)
            .unwrap_or(false)
    })
    .await;
    let victims: Vec<String> = store
        .workers()
        .await
        .unwrap()
        .into_iter()
        .find(|w| w.id == "victim")
        .unwrap()
        .active;
    assert!(!victims.is_empty());
    a.kill().unwrap();
    let killed_at = Instant::now();
    a.wait().unwrap();

    // Every task the victim held starts again on the survivor.
    let mut recovered_after = Duration::ZERO;
    for id in &victims {
        wait_for(Duration::from_secs(17), "recovery", async || {
            let r = store.get(id).await.unwrap().unwrap();
            r.worker_id.as_deref() == Some("survivor") || r.state == TaskState::Succeeded
        })
        .await;
        recovered_after = recovered_after.max(killed_at.elapsed());
    }
    assert!(
        recovered_after <= Duration::from_secs(15),
        "recovered after {recovered_after:?}"
    );
    for t in &tasks {
        wait_for(Duration::from_secs(30), "completion", async || {
            store
                .get(&t.id)
                .await
                .unwrap()
                .map(|r| r.state == TaskState::Succeeded)
                .unwrap_or(false)
        })
        .await;
    }
    for id in &victims {
        assert_eq!(store.get(id).await.unwrap().unwrap().recoveries, 1);
    }
    eprintln!("SIGKILL recovery with default settings: {recovered_after:?}");
    b.kill().unwrap();
    let _ = b.wait();
}

#[tokio::test]
async fn five_hundred_tasks_with_repeated_kills_none_lost_none_completed_twice() {
    let redis = RedisServer::start();
    let url = redis.url();
    let store = store(&url, Duration::from_secs(1)).await;
    let mut workers: Vec<Child> = (0..3)
        .map(|i| spawn_worker(&url, &format!("w{i}-0"), Some("1s")))
        .collect();
    let tasks: Vec<NewTask> = (0..500)
        .map(|i| sleep_task(if i % 5 == 0 { 0.3 } else { 0.02 }))
        .collect();
    for chunk in tasks.chunks(100) {
        store.submit(chunk).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut generation = 0;
    let mut kills = 0;
    loop {
        let s = store.stats().await.unwrap();
        let q = &s.queues[0];
        if q.succeeded + q.failed + q.cancelled == 500 {
            break;
        }
        assert!(Instant::now() < deadline, "stuck: {q:?}");
        // Every 700 ms kill one worker with SIGKILL and start a replacement.
        tokio::time::sleep(Duration::from_millis(700)).await;
        if kills < 8 {
            generation += 1;
            let victim = generation % workers.len();
            workers[victim].kill().unwrap();
            workers[victim].wait().unwrap();
            kills += 1;
            workers[victim] = spawn_worker(&url, &format!("w{victim}-{generation}"), Some("1s"));
        }
    }
    let s = store.stats().await.unwrap();
    let q = &s.queues[0];
    assert_eq!((q.succeeded, q.failed, q.cancelled), (500, 0, 0), "{q:?}");
    let mut recovered = 0;
    for t in &tasks {
        let r = store.get(&t.id).await.unwrap().unwrap();
        assert_eq!(r.state, TaskState::Succeeded);
        recovered += r.recoveries;
    }
    eprintln!(
        "{kills} kills, {recovered} recoveries, {} stale completions rejected",
        s.stale_completions
    );
    assert!(recovered > 0, "the kills hit running tasks");
    for mut w in workers {
        let _ = w.kill();
        let _ = w.wait();
    }
}

#[tokio::test]
async fn acknowledged_submits_survive_a_redis_restart_with_aof() {
    let mut redis = RedisServer::start_persistent();
    let url = redis.url();
    let ids = {
        let store = store(&url, Duration::from_secs(5)).await;
        let tasks: Vec<NewTask> = (0..300)
            .map(|_| NewTask::new("redline.noop", DEFAULT_QUEUE))
            .collect();
        for chunk in tasks.chunks(50) {
            store.submit(chunk).await.unwrap();
        }
        tasks.into_iter().map(|t| t.id).collect::<Vec<_>>()
    };
    redis.restart(); // SIGKILL, then start again from the AOF
    let store = store(&url, Duration::from_secs(5)).await;
    let mut worker = spawn_worker(&url, "after-restart", Some("5s"));
    wait_for(Duration::from_secs(20), "all tasks", async || {
        store
            .stats()
            .await
            .map(|s| s.queues.first().is_some_and(|q| q.succeeded == 300))
            .unwrap_or(false)
    })
    .await;
    for id in &ids {
        assert_eq!(
            store.get(id).await.unwrap().unwrap().state,
            TaskState::Succeeded
        );
    }
    let _ = worker.kill();
    let _ = worker.wait();
}
