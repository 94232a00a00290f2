//! `redline bench tasks`: the task queue against the physical reference of the same Redis.
//!
//! It starts a private redis-server, TaskService and workers as separate processes (the `redline` binary's
//! `serve` command), measures `redis-benchmark -t lpush -c 50` on the same server as the physical reference,
//! then:
//! - enqueue: SubmitTask with 64 calls in flight, and SubmitTasks in batches of 100;
//! - Redis memory per queued no-op task (INFO used_memory delta / N);
//! - drain: 100,000 queued `redline.noop` tasks with 2 worker processes;
//! - latency: submit → start at 1,000 tasks/s offered (times from the Redis clock, in µs), and the
//!   submit → result round trip through WatchTask.
//!
//! With `--peers bullmq`, BullMQ is measured after each figure with the same definitions on a fresh private
//! Redis of the same kind ([`crate::peers`]), and redline's ratio to it is printed.
//!
//! Each throughput figure is the median of several runs. Run it on a release build:
//! `cargo run --release -p redline -- bench tasks`.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::peers::{self, Bullmq, Peer};
use anyhow::{Context, bail};
use clap::Args;
use fred::prelude::*;
use hdrhistogram::Histogram;
use redline_proto::tasks::task_service_client::TaskServiceClient;
use redline_proto::tasks::*;
use redline_taskqueue::connect::{self, RedisOptions};
use redline_taskqueue::{QueueConfig, TaskState, TaskStore};
use redline_testkit::{RedisServer, median};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

/// Sizes of the task benchmark.
#[derive(Debug, Clone, Args)]
pub struct TaskBenchArgs {
    /// Runs per throughput figure (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Tasks per single-submit run.
    #[arg(long, default_value_t = 40_000)]
    pub single: usize,
    /// Tasks per batch-submit run.
    #[arg(long, default_value_t = 200_000)]
    pub batched: usize,
    /// Tasks to drain per run.
    #[arg(long, default_value_t = 100_000)]
    pub drain: usize,
    /// Concurrency of each of the 2 worker processes during the drain.
    #[arg(long, default_value_t = 256)]
    pub drain_concurrency: usize,
    /// Seconds of open-loop load for the latency figure.
    #[arg(long, default_value_t = 5)]
    pub latency_seconds: u64,
    /// Runs Redis with an append-only file fsynced this way, to measure what durability costs (without it,
    /// Redis persists nothing).
    #[arg(long, value_parser = ["always", "everysec", "no"])]
    pub appendfsync: Option<String>,
    /// Peers to measure beside redline in the same run, comma-separated (each on a fresh private Redis).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub peers: Vec<Peer>,
    /// Scratch directory for the peers' packages (installed there on first use).
    #[arg(long, default_value = "/var/tmp/redline-bench-peers")]
    pub peers_dir: PathBuf,
}

struct Services {
    server: PathBuf,
    children: Vec<Child>,
}

impl Services {
    fn spawn(&mut self, args: &[&str]) -> anyhow::Result<()> {
        let child = Command::new(&self.server)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        self.children.push(child);
        Ok(())
    }

    async fn stop_workers(&mut self) {
        // Every child after the first (TaskService) is a worker.
        for mut c in self.children.drain(1..) {
            let _ = c.kill().await;
        }
    }
}

/// Runs the benchmark; `server` is the `redline` binary, whose `serve` command runs each service.
pub async fn run(args: TaskBenchArgs, server: PathBuf) -> anyhow::Result<()> {
    let redis = match &args.appendfsync {
        Some(fsync) => RedisServer::builder().aof(fsync).start(),
        None => RedisServer::start(),
    };
    let url = redis.url();
    println!(
        "redline bench tasks — private redis-server on port {} ({}), {} run(s) per figure\n",
        redis.port(),
        args.appendfsync
            .as_deref()
            .map_or("no persistence".to_owned(), |f| format!("appendfsync {f}")),
        args.runs
    );

    // The physical reference: unpipelined LPUSH from 50 clients.
    let lpush = redis_benchmark_lpush(redis.port()).await?;
    println!("reference  redis-benchmark -t lpush -c 50 -n 200000 ........ {lpush:>9.0} ops/s");

    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    drop(listener);
    let mut services = Services {
        server,
        children: Vec::new(),
    };
    services.spawn(&[
        "serve",
        "tasks",
        "--listen",
        &addr.to_string(),
        "--redis-url",
        &url,
    ])?;
    // A few HTTP/2 connections, as a real client pool would use: one connection is one ordered byte
    // stream, and its single I/O task caps what 64 concurrent calls can get through.
    let clients: Vec<TaskServiceClient<Channel>> = (0..4)
        .map(|_| {
            Channel::from_shared(format!("http://{addr}"))
                .map(|c| TaskServiceClient::new(c.connect_lazy()))
        })
        .collect::<Result<_, _>>()?;
    let client = clients[0].clone();
    wait_for_service(&client).await?;

    let redis_client = connect::client(&url, &RedisOptions::default())?;
    redis_client.wait_for_connect().await?;
    let store = TaskStore::new(redis_client.clone(), QueueConfig::default());

    let bullmq = if args.peers.contains(&Peer::Bullmq) {
        Bullmq::prepare(&args.peers_dir, args.appendfsync.clone()).await?
    } else {
        None
    };

    // 1. Enqueue, single task per RPC, 64 in flight.
    let mut rates = Vec::new();
    for _ in 0..args.runs {
        flush(&redis_client).await?;
        rates.push(submit_single(&clients, args.single, 64).await?);
    }
    let single = median(rates).unwrap_or(0.0);
    println!(
        "enqueue    SubmitTask, 64 in flight ........................ {:>9.0} tasks/s  ({:.2}x LPUSH; target 20,000; Celery apply_async ~1,700)",
        single,
        single / lpush
    );
    if let Some(b) = &bullmq {
        let peer = b
            .figure(args.runs, "single", &[args.single], "rate")
            .await?;
        peers::line(
            "BullMQ queue.add, 64 in flight",
            peer,
            "jobs/s",
            single,
            true,
        );
    }

    // 2. Enqueue, batches of 100.
    let mut rates = Vec::new();
    for _ in 0..args.runs {
        flush(&redis_client).await?;
        rates.push(submit_batched(&clients, args.batched, 100, 4).await?);
    }
    let batched = median(rates).unwrap_or(0.0);
    println!(
        "enqueue    SubmitTasks, batches of 100 ..................... {:>9.0} tasks/s  ({:.2}x LPUSH; target 100,000)",
        batched,
        batched / lpush
    );
    if let Some(b) = &bullmq {
        let peer = b.figure(args.runs, "bulk", &[args.batched], "rate").await?;
        peers::line(
            "BullMQ addBulk of 100, 4 in flight",
            peer,
            "jobs/s",
            batched,
            true,
        );
    }

    // 3. Memory per queued no-op task.
    flush(&redis_client).await?;
    let before = used_memory(&redis_client).await?;
    let n = 100_000;
    submit_batched(&clients, n, 100, 4).await?;
    let after = used_memory(&redis_client).await?;
    let per_task = (after.saturating_sub(before)) as f64 / n as f64;
    println!(
        "memory     per queued redline.noop task ..................... {per_task:>9.1} bytes    (target ≤ 195, BullMQ's on this machine)"
    );
    if let Some(b) = &bullmq {
        let peer = b.figure(1, "memory", &[n], "bytes").await?;
        peers::line("BullMQ per queued job", peer, "bytes", per_task, false);
    }

    // 4. Drain 100,000 queued no-op tasks with 2 worker processes.
    let mut rates = Vec::new();
    for _ in 0..args.runs {
        flush(&redis_client).await?;
        submit_batched(&clients, args.drain, 100, 4).await?;
        let start = Instant::now();
        for i in 0..2 {
            services.spawn(&[
                "serve",
                "worker",
                "--redis-url",
                &url,
                "--concurrency",
                &args.drain_concurrency.to_string(),
                "--worker-id",
                &format!("bench-{i}"),
            ])?;
        }
        wait_succeeded(&store, args.drain as u64, Duration::from_secs(120)).await?;
        rates.push(args.drain as f64 / start.elapsed().as_secs_f64());
        services.stop_workers().await;
    }
    let drain = median(rates).unwrap_or(0.0);
    println!(
        "drain      {} noop tasks, 2 worker processes ............ {:>9.0} tasks/s  ({:.2}x LPUSH; target 20,000; Celery ~780)",
        args.drain,
        drain,
        drain / lpush
    );
    if let Some(b) = &bullmq {
        let peer = b
            .figure(
                args.runs,
                "drain",
                &[args.drain, args.drain_concurrency],
                "rate",
            )
            .await?;
        peers::line("BullMQ, 2 worker processes", peer, "jobs/s", drain, true);
    }

    // 5. Latency at 1,000 tasks/s offered, with two idle workers at default concurrency.
    flush(&redis_client).await?;
    for i in 0..2 {
        services.spawn(&[
            "serve",
            "worker",
            "--redis-url",
            &url,
            "--concurrency",
            "8",
            "--worker-id",
            &format!("lat-{i}"),
        ])?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids = open_loop(&clients, 1000, Duration::from_secs(args.latency_seconds)).await?;
    wait_succeeded(&store, ids.len() as u64, Duration::from_secs(30)).await?;
    let mut start_latency = Histogram::<u64>::new(3)?;
    for id in &ids {
        if let Some(r) = store.get(id).await?
            && let (Some(started), TaskState::Succeeded) = (r.started_us, r.state)
        {
            start_latency.record(started.saturating_sub(r.submitted_us))?;
        }
    }
    println!(
        "latency    submit → start at 1,000/s offered ............... p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target p50 ≤ 1, p99 ≤ 5)",
        start_latency.value_at_quantile(0.5) as f64 / 1000.0,
        start_latency.value_at_quantile(0.99) as f64 / 1000.0,
        start_latency.max() as f64 / 1000.0
    );

    // 6. Round trip: submit, then WatchTask until the result.
    let mut round_trip = Histogram::<u64>::new(3)?;
    let mut c = client.clone();
    for _ in 0..1000 {
        let t0 = Instant::now();
        let id = c
            .submit_task(SubmitTaskRequest {
                task_name: "redline.noop".into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .task_id;
        let mut stream = c
            .watch_task(WatchTaskRequest { task_id: id })
            .await?
            .into_inner();
        while stream.message().await?.is_some() {}
        round_trip.record(t0.elapsed().as_micros() as u64)?;
    }
    println!(
        "latency    submit → result via WatchTask, sequential ....... p50 {:.2} ms, p99 {:.2} ms (target p50 ≤ 1.5; Celery delay().get() p50 2.2)",
        round_trip.value_at_quantile(0.5) as f64 / 1000.0,
        round_trip.value_at_quantile(0.99) as f64 / 1000.0
    );
    services.stop_workers().await;
    if let Some(b) = &bullmq {
        let (p50, p99) = b.round_trip(1000).await?;
        let ours = |q| round_trip.value_at_quantile(q) as f64 / 1000.0;
        peers::line(
            "BullMQ add → waitUntilFinished, p50",
            p50,
            "ms",
            ours(0.5),
            false,
        );
        peers::line(
            "BullMQ add → waitUntilFinished, p99",
            p99,
            "ms",
            ours(0.99),
            false,
        );
    }
    Ok(())
}

async fn redis_benchmark_lpush(port: u16) -> anyhow::Result<f64> {
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-t",
            "lpush",
            "-c",
            "50",
            "-n",
            "200000",
            "-q",
        ])
        .output()
        .await
        .context(
            "redis-benchmark (from the redis-tools package) is needed for the reference figure",
        )?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "LPUSH: 31690.18 requests per second, p50=0.735 msec" (lines may be separated by carriage returns)
    let line = text
        .rsplit(['\r', '\n'])
        .find(|l| l.contains("requests per second"))
        .unwrap_or_default();
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("unexpected redis-benchmark output: {text}"))
}

async fn wait_for_service(client: &TaskServiceClient<Channel>) -> anyhow::Result<()> {
    let mut c = client.clone();
    for _ in 0..100 {
        if c.get_queue_stats(GetQueueStatsRequest {}).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("TaskService did not come up")
}

async fn flush(client: &Client) -> anyhow::Result<()> {
    // Only ever the private server this benchmark started.
    let _: () = client.flushall(false).await?;
    Ok(())
}

async fn used_memory(client: &Client) -> anyhow::Result<u64> {
    let info: String = client.info(Some(fred::types::InfoKind::Memory)).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("INFO memory without used_memory")
}

async fn submit_single(
    clients: &[TaskServiceClient<Channel>],
    total: usize,
    in_flight: usize,
) -> anyhow::Result<f64> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut handles = Vec::new();
    for i in 0..in_flight {
        let mut c = clients[i % clients.len()].clone();
        let next = Arc::clone(&next);
        handles.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                c.submit_task(SubmitTaskRequest {
                    task_name: "redline.noop".into(),
                    ..Default::default()
                })
                .await?;
            }
            Ok::<_, tonic::Status>(())
        }));
    }
    for h in handles {
        h.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

async fn submit_batched(
    clients: &[TaskServiceClient<Channel>],
    total: usize,
    batch: usize,
    in_flight: usize,
) -> anyhow::Result<f64> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut handles = Vec::new();
    for i in 0..in_flight {
        let mut c = clients[i % clients.len()].clone();
        let next = Arc::clone(&next);
        handles.push(tokio::spawn(async move {
            while next.fetch_add(batch, std::sync::atomic::Ordering::Relaxed) < total {
                let tasks = (0..batch)
                    .map(|_| SubmitTaskRequest {
                        task_name: "redline.noop".into(),
                        ..Default::default()
                    })
                    .collect();
                c.submit_tasks(SubmitTasksRequest { tasks }).await?;
            }
            Ok::<_, tonic::Status>(())
        }));
    }
    for h in handles {
        h.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

async fn wait_succeeded(store: &TaskStore, n: u64, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let s = store.stats().await?;
        let done: u64 = s.queues.iter().map(|q| q.succeeded).sum();
        if done >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {done} of {n} tasks succeeded within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Submits at a fixed rate (open loop: the schedule does not wait for replies).
async fn open_loop(
    clients: &[TaskServiceClient<Channel>],
    per_second: u64,
    duration: Duration,
) -> anyhow::Result<Vec<String>> {
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / per_second));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + duration;
    let mut handles = Vec::new();
    while Instant::now() < end {
        ticker.tick().await;
        let mut c = clients[handles.len() % clients.len()].clone();
        handles.push(tokio::spawn(async move {
            c.submit_task(SubmitTaskRequest {
                task_name: "redline.noop".into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().task_id)
        }));
    }
    let mut ids = Vec::with_capacity(handles.len());
    for h in handles {
        ids.push(h.await??);
    }
    Ok(ids)
}
