//! `redline bench memory`: Redis memory stays flat under a long stream of tasks, with default retention.
//!
//! It starts a private redis-server with `maxmemory` (256 MB by default, `noeviction`, as the shipped
//! Redis), the suite over it (TaskService with its default `--result-ttl` and `--max-finished`, two workers,
//! the gateway), then pushes a million `redline.noop` tasks through: SubmitTasks batches of 100 over gRPC,
//! holding the backlog under a bound, plus a steady trickle of REST `POST /tasks/submit` through the
//! gateway. Every few seconds it prints `used_memory` with the sizes of the bounded structures (finished
//! index, listing index, keys); at the end, the gRPC codes and HTTP statuses every request got. A 500 or an
//! INTERNAL is a failure of the run, and so is memory that keeps growing once retention caps are reached.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fred::prelude::*;
use redline_proto::tasks::{SubmitTaskRequest, SubmitTasksRequest};
use redline_taskqueue::connect::{self, RedisOptions};
use redline_taskqueue::keys::Keys;
use redline_testkit::{RedisServer, Suite};
use serde_json::json;
use tokio::sync::Mutex;

/// Sizes of the memory benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct MemoryArgs {
    /// Tasks to push through.
    #[arg(long, default_value_t = 1_000_000)]
    pub tasks: u64,
    /// Redis `maxmemory`.
    #[arg(long, default_value = "256mb")]
    pub maxmemory: String,
    /// Most tasks submitted but not finished at any time.
    #[arg(long, default_value_t = 20_000)]
    pub backlog: u64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 5)]
    pub every: u64,
}

/// Limits high enough never to refuse: the REST trickle measures memory, not rate limiting.
const LIMITS: &str = "1000000000 per day";
/// The gRPC batches.
const BATCH: usize = 100;

/// One sample of the server's state.
struct Sample {
    at: Duration,
    finished: u64,
    used_memory: u64,
    done: u64,
    listed_entries: u64,
    keys: u64,
}

/// Counts of what the requests got back, by gRPC code or HTTP status.
#[derive(Default)]
struct Answers {
    grpc: BTreeMap<String, u64>,
    http: BTreeMap<u16, u64>,
}

/// Runs the benchmark and fails when a request answered 500/INTERNAL or memory kept growing.
pub async fn run(args: MemoryArgs) -> anyhow::Result<()> {
    let redis = RedisServer::builder()
        .args(&[
            "--maxmemory",
            &args.maxmemory,
            "--maxmemory-policy",
            "noeviction",
        ])
        .start();
    let url = redis.url();
    println!(
        "redline bench memory — {} no-op tasks through a private redis-server (maxmemory {}, noeviction), \
         default retention",
        args.tasks, args.maxmemory
    );
    let suite = Arc::new(
        Suite::builder()
            .redis(redis)
            .workers(2)
            .worker(&["--concurrency", "256"])
            .gateway(&["--default-limits", LIMITS])
            .start()
            .await,
    );
    let redis = connect::client(&url, &RedisOptions::default())?;
    redis.wait_for_connect().await?;
    let keys = Keys::new("redline");

    let submitted = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicU64::new(0));
    let answers = Arc::new(Mutex::new(Answers::default()));
    let stop = Arc::new(AtomicBool::new(false));

    // The gRPC submitters: batches of 100, held back while the backlog is full.
    let mut submitters = Vec::new();
    for _ in 0..4 {
        let (mut client, submitted, finished, answers) = (
            suite.tasks(),
            Arc::clone(&submitted),
            Arc::clone(&finished),
            Arc::clone(&answers),
        );
        let (total, backlog) = (args.tasks, args.backlog);
        submitters.push(tokio::spawn(async move {
            loop {
                let sent = submitted.load(Ordering::Relaxed);
                if sent >= total {
                    break;
                }
                if sent.saturating_sub(finished.load(Ordering::Relaxed)) > backlog {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                let n = BATCH.min((total - sent) as usize);
                let tasks = (0..n)
                    .map(|_| SubmitTaskRequest {
                        task_name: "redline.noop".into(),
                        ..Default::default()
                    })
                    .collect();
                let code = match client.submit_tasks(SubmitTasksRequest { tasks }).await {
                    Ok(_) => {
                        submitted.fetch_add(n as u64, Ordering::Relaxed);
                        "OK".to_owned()
                    }
                    Err(status) => format!("{:?}", status.code()),
                };
                *answers.lock().await.grpc.entry(code).or_default() += 1;
            }
        }));
    }

    // The REST trickle, through the gateway, for as long as the gRPC side submits.
    let rest = {
        let (suite, submitted, answers, stop) = (
            Arc::clone(&suite),
            Arc::clone(&submitted),
            Arc::clone(&answers),
            Arc::clone(&stop),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let reply = suite
                    .post("/tasks/submit", json!({ "task_name": "redline.noop" }))
                    .await;
                if reply.status.is_success() {
                    submitted.fetch_add(1, Ordering::Relaxed);
                }
                *answers
                    .lock()
                    .await
                    .http
                    .entry(reply.status.as_u16())
                    .or_default() += 1;
            }
        })
    };

    // Samples, until every submitted task has finished.
    println!(
        "\n{:>7} {:>10} {:>12} {:>10} {:>12} {:>10}",
        "time s", "finished", "used_memory", "done idx", "list entries", "keys"
    );
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut next_sample = Duration::ZERO;
    loop {
        let stats = suite
            .tasks()
            .get_queue_stats(redline_proto::tasks::GetQueueStatsRequest {})
            .await
            .context("queue stats")?
            .into_inner();
        let done: u64 = stats.queues.iter().map(|q| q.succeeded).sum();
        finished.store(done, Ordering::Relaxed);
        let all_sent = submitted.load(Ordering::Relaxed) >= args.tasks;
        if all_sent {
            stop.store(true, Ordering::Relaxed);
        }
        let over = all_sent && done >= submitted.load(Ordering::Relaxed);
        if started.elapsed() >= next_sample || over {
            let s = sample(&redis, &keys, started.elapsed(), done).await?;
            println!(
                "{:>7.0} {:>10} {:>9.1} MB {:>10} {:>12} {:>10}",
                s.at.as_secs_f64(),
                s.finished,
                s.used_memory as f64 / 1e6,
                s.done,
                s.listed_entries,
                s.keys
            );
            samples.push(s);
            next_sample += Duration::from_secs(args.every.max(1));
        }
        if over {
            break;
        }
        if started.elapsed() > Duration::from_secs(3600) {
            bail!("{done} of {} tasks finished within an hour", args.tasks);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for s in submitters {
        s.await?;
    }
    rest.await?;

    let answers = answers.lock().await;
    println!("\ngRPC SubmitTasks answers: {:?}", answers.grpc);
    println!("REST POST /tasks/submit answers: {:?}", answers.http);
    let verdict = flatness(&samples, args.backlog);
    println!("{}", verdict.0);
    let failed = answers.grpc.contains_key("Internal")
        || answers.grpc.contains_key("Unknown")
        || answers.http.keys().any(|s| *s >= 500 && *s != 503);
    if failed {
        bail!("a request answered INTERNAL or 500");
    }
    if !verdict.1 {
        bail!("Redis memory kept growing after the retention caps were reached");
    }
    Ok(())
}

async fn sample(
    redis: &Client,
    keys: &Keys,
    at: Duration,
    finished: u64,
) -> anyhow::Result<Sample> {
    let info: String = redis.info(Some(fred::types::InfoKind::Memory)).await?;
    let used_memory = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("INFO memory without used_memory")?;
    let done: u64 = redis.zcard(keys.done()).await?;
    let listed_entries: u64 = redis.xlen(keys.all()).await?;
    let keys: u64 = redis.dbsize().await?;
    Ok(Sample {
        at,
        finished,
        used_memory,
        done,
        listed_entries,
        keys,
    })
}

/// Memory is flat when, once the finished-record cap is reached (the default `--max-finished` plus the
/// backlog), the peak over the second half of the samples is within 10% of the first half's. Returns the
/// verdict line and whether it holds (too short a run to reach the cap judges nothing).
fn flatness(samples: &[Sample], backlog: u64) -> (String, bool) {
    let cap = redline_taskqueue::store::DEFAULT_MAX_FINISHED + backlog;
    let steady: Vec<&Sample> = samples.iter().filter(|s| s.finished >= cap).collect();
    let half = steady.len() / 2;
    if half < 2 {
        return (
            format!("memory   too few samples past {cap} finished tasks to judge flatness"),
            true,
        );
    }
    let peak = |s: &[&Sample]| s.iter().map(|s| s.used_memory).max().unwrap_or(0);
    let (first, second) = (peak(&steady[..half]), peak(&steady[half..]));
    let growth = second as f64 / first.max(1) as f64 - 1.0;
    let flat = growth <= 0.10;
    (
        format!(
            "memory   past {cap} finished: peak {:.1} MB over the first half of the samples, {:.1} MB over \
             the second ({:+.1}%): {}",
            first as f64 / 1e6,
            second as f64 / 1e6,
            growth * 100.0,
            if flat { "flat" } else { "GROWING" }
        ),
        flat,
    )
}
