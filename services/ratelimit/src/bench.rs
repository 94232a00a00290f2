//! The benchmark: decisions per second and decision latency, against the physical reference of the same Redis.
//!
//! One run: (1) `redis-benchmark` runs `EVALSHA` of a minimal INCR + PEXPIRE script ([`BENCH_REFERENCE`])
//! with 50 clients, the ceiling any Redis-backed limiter can reach here; (2) for each scenario, one client
//! process keeps 64 calls in flight for `--seconds` and counts decisions per second; (3) the same scenario is
//! offered a steady `--rate` (default 5,000/s) and the latency of each decision is recorded. Figures are the
//! median of `--runs` runs. The service listens on 127.0.0.1 over a private redis-server (or `--redis-url`):
//! as its own process when the caller gives a [`BenchArgs::server_command`] (`redline bench ratelimit` does),
//! else inside this process. The `engine` scenario always runs the decision engine in this process.
//!
//! [`BENCH_REFERENCE`]: crate::store::scripts::BENCH_REFERENCE

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fred::interfaces::{ClientLike, LuaInterface};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use redline_proto::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use redline_proto::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry as EnvoyEntry;
use redline_proto::envoy::service::ratelimit::v3::RateLimitRequest;
use redline_proto::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient as EnvoyClient;
use redline_proto::redline::ratelimit::v1 as pb;
use redline_proto::redline::ratelimit::v1::rate_limit_service_client::RateLimitServiceClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::limiter::{DecisionRequest, DescriptorRequest, Limiter, UnknownDomain};
use crate::rules::RuleSet;
use crate::store::keys::KeySpace;
use crate::store::redis::{RedisStore, TimeMode};
use crate::store::scripts::BENCH_REFERENCE;

/// Benchmark options.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Use this Redis instead of starting a private redis-server. Keys go under a random prefix; nothing is
    /// flushed.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Runs per figure (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Seconds of each throughput measurement.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Calls in flight for the throughput measurement.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// HTTP/2 connections the client spreads its calls over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Offered decisions per second for the latency measurement.
    #[arg(long, default_value_t = 5_000)]
    pub rate: u64,
    /// Seconds of each latency measurement.
    #[arg(long, default_value_t = 3)]
    pub latency_seconds: u64,
    /// Distinct client keys the decisions are spread over.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Scenarios to run (comma-separated): fixed, sliding, gcra, three, envoy; engine (the fixed-window
    /// decision without gRPC, in this process) and rpc-only (ListRules: gRPC without Redis) split the cost.
    #[arg(
        long,
        default_value = "fixed,sliding,gcra,three,envoy,engine,rpc-only",
        value_delimiter = ','
    )]
    pub scenarios: Vec<String>,
    /// Program and arguments that serve RateLimitService (given `--listen` and the service's flags); `None`
    /// runs the service inside this process.
    #[arg(skip)]
    pub server_command: Option<Vec<String>>,
}

const RULES: &str = r#"
domain: bench
descriptors:
  - key: fixed
    rate_limit: {unit: hour, requests_per_unit: 1000000000}
  - key: sliding
    algorithm: sliding_window
    rate_limit: {unit: hour, requests_per_unit: 1000000000}
  - key: gcra
    algorithm: gcra
    rate_limit: {unit: hour, requests_per_unit: 1000000000}
  - key: three
    rate_limits:
      - {unit: second, requests_per_unit: 1000000000}
      - {unit: hour, requests_per_unit: 1000000000, algorithm: sliding_window}
      - {unit: day, requests_per_unit: 1000000000, algorithm: gcra}
"#;

struct PrivateRedis {
    child: tokio::process::Child,
    dir: PathBuf,
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn start_redis() -> anyhow::Result<(PrivateRedis, String)> {
    let port = free_port()?;
    let dir = std::env::temp_dir().join(format!("redline-rl-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let child = tokio::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting redis-server (is it on PATH?)")?;
    let url = format!("redis://127.0.0.1:{port}/0");
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok((PrivateRedis { child, dir }, url));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("redis-server did not start")
}

/// `redis-benchmark` EVALSHA of the minimal script: requests per second.
async fn reference(url: &str, sha: &str, keys: u64) -> anyhow::Result<f64> {
    let config = fred::types::config::Config::from_url(url)?;
    let (host, port) = match &config.server {
        fred::types::config::ServerConfig::Centralized { server } => {
            (server.host.to_string(), server.port)
        }
        other => bail!("the benchmark needs a single Redis server, got {other:?}"),
    };
    let mut cmd = tokio::process::Command::new("redis-benchmark");
    cmd.args([
        "-h",
        &host,
        "-p",
        &port.to_string(),
        "-c",
        "50",
        "-n",
        "200000",
    ])
    .args(["-r", &keys.to_string(), "-q", "EVALSHA", sha, "1"])
    .arg("redline:bench:ref:{__rand_int__}")
    .arg("3600000");
    if let Some(password) = &config.password {
        cmd.args(["-a", password]);
    }
    let out = cmd.output().await.context("running redis-benchmark")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(['\r', '\n'])
        .rfind(|l| l.contains("requests per second"))
        .and_then(|l| l.split(" requests per second").next())
        .and_then(|l| l.split_whitespace().next_back())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("cannot read redis-benchmark output: {text}"))
}

#[derive(Clone)]
struct Clients {
    redline: Vec<RateLimitServiceClient<Channel>>,
    envoy: Vec<EnvoyClient<Channel>>,
    /// The decision engine without gRPC, to separate the service's own cost from the RPC layer's.
    engine: Arc<Limiter>,
}

fn call(clients: &Clients, scenario: &str, i: u64, keys: u64) -> BoxFuture<'static, bool> {
    let n = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) % keys;
    let value = format!("u{n}");
    let lane = usize::try_from(i).unwrap_or(0) % clients.redline.len();
    if scenario == "engine" {
        let engine = clients.engine.clone();
        return Box::pin(async move {
            let request = DecisionRequest {
                domain: "bench".to_owned(),
                descriptors: vec![DescriptorRequest {
                    entries: vec![("fixed".to_owned(), value)],
                    limits: None,
                    cost: 1,
                }],
                dry_run: false,
                unknown_domain: UnknownDomain::Reject,
            };
            engine.decide(&request).await.is_ok_and(|d| d.allowed)
        });
    }
    if scenario == "rpc-only" {
        let mut client =
            clients.redline[usize::try_from(i).unwrap_or(0) % clients.redline.len()].clone();
        return Box::pin(async move { client.list_rules(pb::ListRulesRequest {}).await.is_ok() });
    }
    if scenario == "envoy" {
        let mut client = clients.envoy[lane].clone();
        Box::pin(async move {
            let request = RateLimitRequest {
                domain: "bench".to_owned(),
                descriptors: vec![RateLimitDescriptor {
                    entries: vec![EnvoyEntry {
                        key: "fixed".to_owned(),
                        value,
                    }],
                    limit: None,
                    hits_addend: None,
                }],
                hits_addend: 1,
            };
            client.should_rate_limit(request).await.is_ok()
        })
    } else {
        let mut client = clients.redline[lane].clone();
        let key = scenario.to_owned();
        Box::pin(async move {
            let request = pb::CheckRequest {
                domain: "bench".to_owned(),
                descriptors: vec![pb::Descriptor {
                    entries: vec![pb::Entry { key, value }],
                    ..Default::default()
                }],
                ..Default::default()
            };
            client
                .check(request)
                .await
                .is_ok_and(|r| r.get_ref().allowed)
        })
    }
}

/// Closed loop, `concurrency` calls in flight: (decisions per second, decisions, failed calls).
async fn throughput(clients: &Clients, scenario: &str, args: &BenchArgs) -> (f64, u64, u64) {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let mut inflight = FuturesUnordered::new();
    let mut issued = 0u64;
    for _ in 0..args.concurrency {
        inflight.push(call(clients, scenario, issued, args.keys));
        issued += 1;
    }
    let (mut done, mut failed) = (0u64, 0u64);
    while let Some(ok) = inflight.next().await {
        done += 1;
        failed += u64::from(!ok);
        if Instant::now() < deadline {
            inflight.push(call(clients, scenario, issued, args.keys));
            issued += 1;
        }
    }
    (done as f64 / started.elapsed().as_secs_f64(), done, failed)
}

/// Redis's running totals for `EVALSHA`: (calls, µs spent in them), from `INFO commandstats`.
async fn script_totals(redis: &fred::clients::Client) -> Option<(u64, u64)> {
    let info: String = redis
        .info(Some(fred::types::InfoKind::CommandStats))
        .await
        .ok()?;
    let line = info
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:"))?;
    let field = |name: &str| {
        line.split(',')
            .find_map(|kv| kv.strip_prefix(name))
            .and_then(|v| v.parse().ok())
    };
    Some((field("calls=")?, field("usec=")?))
}

/// Open loop at `rate` per second: (p50 ms, p99 ms, failed calls). One task issues the calls on the ticker's
/// schedule and collects their answers, as a client's event loop would; each latency runs from the moment
/// its call is issued to its answer.
async fn latency(
    clients: &Clients,
    scenario: &str,
    args: &BenchArgs,
) -> anyhow::Result<(f64, f64, u64)> {
    let total = args.rate * args.latency_seconds;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut inflight = FuturesUnordered::new();
    let mut histogram = Histogram::<u64>::new(3)?;
    let (mut issued, mut failed) = (0u64, 0u64);
    loop {
        tokio::select! {
            _ = ticker.tick(), if issued < total => {
                let call = call(clients, scenario, 1_000_000_000 + issued, args.keys);
                let started = Instant::now();
                inflight.push(async move { (call.await, started.elapsed()) });
                issued += 1;
            }
            Some((ok, elapsed)) = inflight.next() => {
                let _ = histogram.record(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
                failed += u64::from(!ok);
            }
            else => break,
        }
    }
    Ok((
        histogram.value_at_quantile(0.50) as f64 / 1000.0,
        histogram.value_at_quantile(0.99) as f64 / 1000.0,
        failed,
    ))
}

/// Figures of one scenario, one entry per run.
#[derive(Default)]
struct Row {
    scenario: String,
    rps: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    /// Time Redis spent in the decision script per decision (µs), during the throughput measurement.
    script_us: Vec<f64>,
    /// Decisions per script call (the coalescing at work), during the throughput measurement.
    per_call: Vec<f64>,
    failures: u64,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs the benchmark and prints the figures.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.runs == 0
        || args.concurrency == 0
        || args.connections == 0
        || args.rate == 0
        || args.keys == 0
    {
        bail!("--runs, --concurrency, --connections, --rate and --keys must be at least 1");
    }
    let (_private, url) = match &args.redis_url {
        Some(url) => (None, url.clone()),
        None => {
            let (redis, url) = start_redis().await?;
            (Some(redis), url)
        }
    };
    let redis = fred::prelude::Builder::from_config(fred::types::config::Config::from_url(&url)?)
        .build()?;
    redis.init().await.context("connecting to Redis")?;
    let sha: String = redis.script_load(BENCH_REFERENCE).await?;

    let dir = std::env::temp_dir().join(format!("redline-rl-bench-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let rules = dir.join("rules.yaml");
    std::fs::write(&rules, RULES)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let flags = [
        "--redis-url".to_owned(),
        url.clone(),
        "--config".to_owned(),
        rules.display().to_string(),
        "--key-prefix".to_owned(),
        format!("redline:bench:{}", rand::random::<u32>()),
    ];
    let shutdown = CancellationToken::new();
    // Either a child process (killed on drop) or a task of this runtime, stopped through `shutdown`.
    let (_process, server) = match &args.server_command {
        // The service as its own process, as deployed: the client's and the service's work do not share a
        // runtime.
        Some(command) => {
            let listen = listener.local_addr()?.to_string();
            drop(listener);
            let child = tokio::process::Command::new(&command[0])
                .args(&command[1..])
                .args(["--listen", &listen])
                .args(&flags)
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("starting the rate-limit service")?;
            (Some(child), None)
        }
        None => {
            let config = <crate::Config as clap::Parser>::try_parse_from(
                std::iter::once("bench".to_owned()).chain(flags),
            )?;
            let task = tokio::spawn(crate::run(config, listener, shutdown.clone()));
            (None, Some(task))
        }
    };

    let mut redline = Vec::new();
    let mut envoy = Vec::new();
    for _ in 0..args.connections {
        let channel = connect(&endpoint).await?;
        redline.push(RateLimitServiceClient::new(channel.clone()));
        envoy.push(EnvoyClient::new(channel));
    }
    let timeout = Duration::from_millis(20);
    let engine_client = crate::store::redis::connect(&url, timeout)?;
    engine_client.wait_for_connect().await?;
    let engine = Arc::new(Limiter::new(
        RuleSet::from_yaml(RULES)?,
        None,
        KeySpace::new(&format!("redline:bench:engine:{}", rand::random::<u32>()))?,
        Arc::new(RedisStore::new(engine_client, TimeMode::Redis, timeout)),
        timeout,
        1_000,
    ));
    let clients = Arc::new(Clients {
        redline,
        envoy,
        engine,
    });
    // Wait until the service has connected to Redis.
    let mut ready = false;
    for i in 0..250 {
        if call(&clients, "fixed", i, args.keys).await {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !ready {
        bail!(
            "the in-process service cannot reach Redis at {}",
            redline_runtime::redact_url(&url)
        );
    }
    // Warm up: connections, script cache, allocator.
    let _ = throughput(
        &clients,
        "fixed",
        &BenchArgs {
            seconds: 1,
            ..args.clone()
        },
    )
    .await;

    let mut reference_runs = Vec::new();
    let mut rows: Vec<Row> = args
        .scenarios
        .iter()
        .map(|s| Row {
            scenario: s.clone(),
            ..Row::default()
        })
        .collect();
    for run in 1..=args.runs {
        let reference_rps = reference(&url, &sha, args.keys).await?;
        reference_runs.push(reference_rps);
        eprintln!("run {run}: redis-benchmark EVALSHA reference {reference_rps:.0}/s");
        for row in &mut rows {
            let scenario = &row.scenario;
            // The load runs on a runtime worker, as a client's calls would; on the main thread every
            // reply would cost a cross-thread wake-up that is the benchmark's, not the service's.
            let (c, s, a) = (clients.clone(), scenario.clone(), args.clone());
            let before = script_totals(&redis).await;
            let (r, done, f1) = tokio::spawn(async move { throughput(&c, &s, &a).await }).await?;
            let after = script_totals(&redis).await;
            let (c, s, a) = (clients.clone(), scenario.clone(), args.clone());
            let (l50, l99, f2) = tokio::spawn(async move { latency(&c, &s, &a).await }).await??;
            eprintln!("run {run}: {scenario:<8} {r:>9.0}/s  p50 {l50:.3} ms  p99 {l99:.3} ms");
            if let (Some((calls0, us0)), Some((calls1, us1))) = (before, after)
                && calls1 > calls0
                && done > 0
            {
                row.script_us.push((us1 - us0) as f64 / done as f64);
                row.per_call.push(done as f64 / (calls1 - calls0) as f64);
            }
            row.rps.push(r);
            row.p50.push(l50);
            row.p99.push(l99);
            row.failures += f1 + f2;
        }
    }
    let reference_rps = median(reference_runs);
    println!();
    println!(
        "redis-benchmark EVALSHA INCR+PEXPIRE (50 clients): {reference_rps:.0}/s (median of {})",
        args.runs
    );
    println!(
        "{:<10} {:>12} {:>10} {:>12} {:>12} {:>9} {:>10} {:>10}",
        "scenario", "decisions/s", "ratio", "p50 ms", "p99 ms", "failures", "script µs", "per call"
    );
    println!(
        "{:<10} {:>12} {:>10} {:>12} {:>12} {:>9} {:>10} {:>10}",
        "",
        format!("({} in flight)", args.concurrency),
        "",
        format!("@{}/s", args.rate),
        format!("@{}/s", args.rate),
        "",
        "/decision",
        "decisions"
    );
    for row in rows {
        let rps = median(row.rps);
        // Scenarios that make no script call (rpc-only) have no script figures.
        let (script_us, per_call) = if row.script_us.is_empty() {
            ("-".to_owned(), "-".to_owned())
        } else {
            (
                format!("{:.1}", median(row.script_us)),
                format!("{:.1}", median(row.per_call)),
            )
        };
        println!(
            "{:<10} {rps:>12.0} {:>9.0}% {:>12.3} {:>12.3} {:>9} {script_us:>10} {per_call:>10}",
            row.scenario,
            100.0 * rps / reference_rps,
            median(row.p50),
            median(row.p99),
            row.failures,
        );
    }
    println!(
        "(script µs: time Redis spent in the decision script per decision, from INFO commandstats; per call: \
         decisions coalesced into one script call)"
    );
    shutdown.cancel();
    if let Some(server) = server {
        let _ = server.await;
    }
    let _ = redis.quit().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn connect(endpoint: &str) -> anyhow::Result<Channel> {
    for _ in 0..100 {
        if let Ok(channel) = Channel::from_shared(endpoint.to_owned())?.connect().await {
            return Ok(channel);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("the in-process service did not start")
}
