//! REST `POST /tasks/submit` against direct gRPC `SubmitTask`, both rate limited through RateLimitService.
//!
//! The direct path is what a gRPC client that honours the same limits does with unary calls: `Check`, then
//! `SubmitTask`. The REST path is one HTTP request, for which the gateway makes the same decision over its
//! long-lived `CheckStream` and then calls `SubmitTask`. The difference is the gateway's cost (HTTP/1.1
//! parsing, JSON translation and one more hop) less what the stream saves over a unary `Check`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use redline_proto::redline::ratelimit::v1 as rl;
use redline_proto::redline::ratelimit::v1::rate_limit_service_client::RateLimitServiceClient;
use redline_proto::tasks as pb;
use redline_proto::tasks::task_service_client::TaskServiceClient;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Benchmark options.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Runs per path (the median is reported). Each run measures both paths back to back, and the ratio is
    /// taken per run, so load from elsewhere on the machine weighs on both sides alike.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Seconds of each throughput measurement.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Requests in flight for the throughput measurement.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Requests in flight for the latency measurement (low, so latency is not queueing).
    #[arg(long, default_value_t = 2)]
    pub latency_concurrency: usize,
    /// Seconds of each latency measurement.
    #[arg(long, default_value_t = 2)]
    pub latency_seconds: u64,
    /// HTTP/2 connections per backend, for the gateway and for the direct client alike.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
}

impl Default for BenchArgs {
    fn default() -> Self {
        Self {
            runs: 5,
            seconds: 3,
            concurrency: 32,
            latency_concurrency: 2,
            latency_seconds: 2,
            connections: 1,
        }
    }
}

/// Limits high enough never to refuse, so every request pays for a real decision.
const BENCH_LIMITS: &str = "1000000000 per day; 1000000000 per hour";

struct Stack {
    _redis: redline_taskqueue::testing::RedisServer,
    tasks: SocketAddr,
    rls: SocketAddr,
    gateway: SocketAddr,
    stop: CancellationToken,
}

async fn start_stack(connections: usize) -> anyhow::Result<Stack> {
    let redis = redline_taskqueue::testing::RedisServer::start();
    let env: HashMap<String, String> = HashMap::new();
    let stop = CancellationToken::new();
    let tasks_config = redline_tasks::Config::from_args(
        redline_tasks::config::Args {
            redis_url: Some(redis.url()),
            ..Default::default()
        },
        &env,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let tasks = l.local_addr()?;
    tokio::spawn(redline_tasks::run(tasks_config, l, stop.clone()));
    let worker = redline_worker::Config::from_args(
        redline_worker::config::Args {
            redis_url: Some(redis.url()),
            ..Default::default()
        },
        &env,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    tokio::spawn(redline_worker::run(
        worker,
        redline_worker::default_registry(),
        stop.clone(),
    ));
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let rls = l.local_addr()?;
    // Every process of the suite shares this process's cores here; a generous decision budget keeps a
    // scheduling hiccup from turning into an UNAVAILABLE that would abort the measurement.
    let rls_config = <redline_ratelimit::Config as clap::Parser>::try_parse_from([
        "redline-ratelimit",
        "--redis-url",
        &redis.url(),
        "--timeout-ms",
        "250",
    ])?;
    tokio::spawn(redline_ratelimit::run(rls_config, l, stop.clone()));
    let gw_config = crate::Config::from_args(
        crate::Args {
            tasks_url: Some(format!("http://{tasks}")),
            ratelimit_url: Some(format!("http://{rls}")),
            default_limits: Some(BENCH_LIMITS.to_owned()),
            backend_connections: Some(connections.to_string()),
            ..Default::default()
        },
        &env,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let gateway = l.local_addr()?;
    tokio::spawn(crate::run(gw_config, l, stop.clone()));
    Ok(Stack {
        _redis: redis,
        tasks,
        rls,
        gateway,
        stop,
    })
}

#[derive(Clone)]
enum Path {
    Direct {
        tasks: crate::Backend,
        rls: crate::Backend,
    },
    Rest {
        // Boxed: the HTTP client is much larger than the direct path's two handles.
        client: Box<Client<HttpConnector, Full<Bytes>>>,
        url: String,
    },
}

fn limits() -> Vec<rl::LimitSpec> {
    redline_ratelimit::limits::parse_flask_limits(
        BENCH_LIMITS,
        redline_ratelimit::limits::Algorithm::FixedWindow,
    )
    .unwrap_or_default()
    .into_iter()
    .map(|l| rl::LimitSpec {
        name: l.name,
        limit: l.limit,
        window: prost_types::Duration::try_from(Duration::from_millis(l.window_ms)).ok(),
        algorithm: rl::Algorithm::FixedWindow as i32,
        failure_mode: rl::FailureMode::Error as i32,
        ..rl::LimitSpec::default()
    })
    .collect()
}

impl Path {
    async fn one(&mut self) -> anyhow::Result<()> {
        match self {
            Self::Direct { tasks, rls } => {
                let decision = RateLimitServiceClient::new(rls.channel())
                    .check(rl::CheckRequest {
                        key: "gateway|bench|direct".into(),
                        limits: limits(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                anyhow::ensure!(decision.allowed, "refused");
                TaskServiceClient::new(tasks.channel())
                    .submit_task(pb::SubmitTaskRequest {
                        task_name: "redline.noop".into(),
                        ..Default::default()
                    })
                    .await?;
            }
            Self::Rest { client, url } => {
                let req = hyper::Request::post(url.as_str())
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(
                        br#"{"task_name": "redline.noop", "args": [], "kwargs": {}}"#,
                    )))?;
                let resp = client.request(req).await?;
                let status = resp.status();
                let _ = resp.into_body().collect().await?;
                anyhow::ensure!(status.is_success(), "HTTP {status}");
            }
        }
        Ok(())
    }
}

struct Figures {
    per_second: f64,
    p50_us: u64,
    p99_us: u64,
}

async fn drive(
    path: &Path,
    concurrency: usize,
    seconds: u64,
) -> anyhow::Result<(u64, hdrhistogram::Histogram<u64>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for _ in 0..concurrency {
        let mut path = path.clone();
        let stop = stop.clone();
        handles.push(tokio::spawn(async move {
            let mut h = hdrhistogram::Histogram::<u64>::new(3)?;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                path.one().await?;
                h.record(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX))?;
                n += 1;
            }
            anyhow::Ok((n, h))
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut hist = hdrhistogram::Histogram::<u64>::new(3)?;
    for h in handles {
        let (n, h) = h.await??;
        total += n;
        hist.add(h)?;
    }
    Ok((total, hist))
}

async fn measure(path: &Path, args: &BenchArgs) -> anyhow::Result<Figures> {
    let (n, _) = drive(path, args.concurrency, args.seconds).await?;
    let (_, hist) = drive(path, args.latency_concurrency, args.latency_seconds).await?;
    #[allow(clippy::cast_precision_loss)]
    let per_second = n as f64 / args.seconds as f64;
    Ok(Figures {
        per_second,
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn median_u(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// Starts a private suite (redis-server, TaskService, a worker, RateLimitService, the gateway), then
/// measures direct gRPC and REST back to back in each run and prints the medians and the ratio.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let stack = start_stack(args.connections)
        .await
        .context("starting the suite")?;
    // Let every service finish its first Redis probe.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let direct = Path::Direct {
        tasks: crate::Backend::new(&format!("http://{}", stack.tasks), args.connections)?,
        rls: crate::Backend::new(&format!("http://{}", stack.rls), args.connections)?,
    };
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let rest = Path::Rest {
        client: Box::new(Client::builder(hyper_util::rt::TokioExecutor::new()).build(http)),
        url: format!("http://{}/tasks/submit", stack.gateway),
    };
    // Warm connections and caches on both paths.
    drive(&direct, args.concurrency, 1).await?;
    drive(&rest, args.concurrency, 1).await?;
    let (mut d, mut r, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..args.runs.max(1) {
        let (direct, rest) = (measure(&direct, &args).await?, measure(&rest, &args).await?);
        let ratio = if direct.per_second > 0.0 {
            rest.per_second / direct.per_second
        } else {
            0.0
        };
        println!(
            "run {}: direct {:.0}/s p99 {} µs | rest {:.0}/s p99 {} µs | ratio {:.0}%",
            i + 1,
            direct.per_second,
            direct.p99_us,
            rest.per_second,
            rest.p99_us,
            ratio * 100.0
        );
        d.push(direct);
        r.push(rest);
        ratios.push(ratio);
    }
    let summary = |f: &[Figures]| {
        (
            median(f.iter().map(|x| x.per_second).collect()),
            median_u(f.iter().map(|x| x.p50_us).collect()),
            median_u(f.iter().map(|x| x.p99_us).collect()),
        )
    };
    let (dt, d50, d99) = summary(&d);
    let (rt, r50, r99) = summary(&r);
    println!(
        "\nsubmit, rate limited (median of {} runs; throughput at {} in flight, latency at {} in flight; \
         {} connection(s) per backend)",
        args.runs.max(1),
        args.concurrency,
        args.latency_concurrency,
        args.connections,
    );
    println!(
        "{:<14} {:>12} {:>10} {:>10}",
        "path", "req/s", "p50 µs", "p99 µs"
    );
    println!("{:<14} {:>12.0} {:>10} {:>10}", "direct gRPC", dt, d50, d99);
    println!(
        "{:<14} {:>12.0} {:>10} {:>10}",
        "REST gateway", rt, r50, r99
    );
    #[allow(clippy::cast_precision_loss)]
    let added = (r99 as f64 - d99 as f64) / 1000.0;
    println!(
        "gateway throughput {:.0}% of direct (median of the runs' ratios; target ≥ 70%); added p99 {added:.2} ms \
         (target ≤ 1 ms)",
        median(ratios) * 100.0,
    );
    stack.stop.cancel();
    Ok(())
}
