//! REST `POST /tasks/submit` against direct gRPC `SubmitTask`, both rate limited through RateLimitService.
//!
//! The direct path is what a gRPC client that honours the same limits does with unary calls: `Check`, then
//! `SubmitTask`. The REST path is one HTTP request, for which the gateway makes the same decision over its
//! long-lived `CheckStream` and then calls `SubmitTask`. The difference is the gateway's cost (HTTP/1.1
//! parsing, JSON translation and one more hop) less what the stream saves over a unary `Check`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use redline_proto::redline::ratelimit::v1 as rl;
use redline_proto::redline::ratelimit::v1::rate_limit_service_client::RateLimitServiceClient;
use redline_proto::tasks as pb;
use redline_proto::tasks::task_service_client::TaskServiceClient;
use redline_testkit::Suite;

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

/// The suite in this process over a private Redis. Every process of the suite shares this process's cores
/// here; a generous decision budget keeps a scheduling hiccup from turning into an UNAVAILABLE that would
/// abort the measurement.
async fn start_suite(connections: usize) -> Suite {
    let connections = connections.to_string();
    Suite::builder()
        .worker(&["--concurrency", "2"])
        .ratelimit(&["--timeout", "250ms"])
        .gateway(&[
            "--default-limits",
            BENCH_LIMITS,
            "--backend-connections",
            &connections,
        ])
        .start()
        .await
}

#[derive(Clone)]
enum Path {
    Direct {
        tasks: redline_gateway::Backend,
        rls: redline_gateway::Backend,
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

fn median(v: Vec<f64>) -> f64 {
    redline_testkit::median(v).unwrap_or(0.0)
}

fn median_u(v: Vec<u64>) -> u64 {
    redline_testkit::median(v).unwrap_or(0)
}

/// Starts a private suite (redis-server, TaskService, a worker, RateLimitService, the gateway), then
/// measures direct gRPC and REST back to back in each run and prints the medians and the ratio.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let suite = start_suite(args.connections).await;
    let direct = Path::Direct {
        tasks: redline_gateway::Backend::new(
            &format!("http://{}", suite.tasks_addr()),
            args.connections,
        )?,
        rls: redline_gateway::Backend::new(
            &format!("http://{}", suite.ratelimit_addr()),
            args.connections,
        )?,
    };
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let rest = Path::Rest {
        client: Box::new(Client::builder(hyper_util::rt::TokioExecutor::new()).build(http)),
        url: format!("http://{}/tasks/submit", suite.gateway_addr()),
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
    drop(suite);
    Ok(())
}
