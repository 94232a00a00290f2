//! `redline bench ratelimit`: decisions per second and decision latency, against the physical reference of the same Redis.
//!
//! One run: (1) `redis-benchmark` runs `EVALSHA` of a minimal INCR + PEXPIRE script ([`BENCH_REFERENCE`])
//! with 50 clients, the ceiling any Redis-backed limiter can reach here; (2) for each scenario, one client
//! process keeps 64 calls in flight for `--seconds` and counts decisions per second; (3) the same scenario is
//! offered a steady `--rate` (default 5,000/s) and the latency of each decision is recorded. Figures are the
//! median of `--runs` runs. The service listens on 127.0.0.1 over a private redis-server (or `--redis-url`):
//! as its own process when the caller gives a [`BenchArgs::server_command`] (`redline bench ratelimit` does),
//! else inside this process. The `engine` scenario always runs the decision engine in this process.

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

use redline_ratelimit::limiter::{DecisionRequest, DescriptorRequest, Limiter, UnknownDomain};
use redline_ratelimit::rules::RuleSet;
use redline_ratelimit::store::keys::KeySpace;
use redline_ratelimit::store::redis::{RedisStore, TimeMode};
use redline_testkit::RedisServer;

/// Minimal `INCR` + `PEXPIRE`-on-first fixed window: the least any Redis-backed limiter must do per decision,
/// and so the reference its figures are compared with.
///
/// - `KEYS[1]`: counter; `ARGV[1]`: window in ms.
const BENCH_REFERENCE: &str = r#"
local c = redis.call('INCR', KEYS[1])
if c == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return c
"#;

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
    /// Scenarios to run (comma-separated): fixed, sliding, gcra, three (unary Check calls), envoy
    /// (ShouldRateLimit); fixed-stream, sliding-stream, gcra-stream, three-stream (the same decisions over
    /// CheckStream, one stream per connection); engine (the fixed-window decision without gRPC, in this
    /// process) and rpc-only (ListRules: gRPC without Redis) split the cost.
    #[arg(
        long,
        default_value = "fixed,sliding,gcra,three,envoy,fixed-stream,sliding-stream,gcra-stream,three-stream,engine,rpc-only",
        value_delimiter = ','
    )]
    pub scenarios: Vec<String>,
    /// Program and arguments that serve RateLimitService (given `--listen` and the service's flags); `None`
    /// runs the service inside this process.
    #[arg(skip)]
    pub server_command: Option<Vec<String>>,
}

/// Every scenario `--scenarios` accepts.
const SCENARIOS: [&str; 11] = [
    "fixed",
    "sliding",
    "gcra",
    "three",
    "envoy",
    "fixed-stream",
    "sliding-stream",
    "gcra-stream",
    "three-stream",
    "engine",
    "rpc-only",
];

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

/// The CheckStream scenarios' descriptor keys: `fixed-stream` decides the `fixed` rule, and so on.
fn stream_rule(scenario: &str) -> Option<&str> {
    scenario.strip_suffix("-stream")
}

/// Decision `i` of the rule `key` over CheckStream.
fn stream_request(key: &str, i: u64, keys: u64) -> pb::CheckStreamRequest {
    let n = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) % keys;
    pb::CheckStreamRequest {
        request: Some(pb::CheckRequest {
            domain: "bench".to_owned(),
            descriptors: vec![pb::Descriptor {
                entries: vec![pb::Entry {
                    key: key.to_owned(),
                    value: format!("u{n}"),
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

fn stream_allowed(reply: &pb::CheckStreamResponse) -> bool {
    matches!(
        &reply.result,
        Some(pb::check_stream_response::Result::Response(r)) if r.allowed
    )
}

/// Opens a CheckStream call: where its requests go, and its replies.
async fn open_stream(
    client: &RateLimitServiceClient<Channel>,
    capacity: usize,
) -> anyhow::Result<(
    tokio::sync::mpsc::Sender<pb::CheckStreamRequest>,
    tonic::Streaming<pb::CheckStreamResponse>,
)> {
    let (requests, outgoing) = tokio::sync::mpsc::channel(capacity.max(1));
    let replies = client
        .clone()
        .check_stream(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await?
        .into_inner();
    Ok((requests, replies))
}

/// Closed loop over CheckStream: `concurrency` decisions in flight, spread over one stream per connection,
/// each stream driven by its own task as a gateway's connection would. Same result as [`throughput`].
async fn stream_throughput(
    clients: &Clients,
    rule: &str,
    args: &BenchArgs,
) -> anyhow::Result<(f64, u64, u64)> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let streams = args.connections.min(args.concurrency);
    let mut tasks = Vec::new();
    for s in 0..streams {
        // The first `concurrency % streams` streams carry one more.
        let depth = args.concurrency / streams + usize::from(s < args.concurrency % streams);
        let (requests, mut replies) = open_stream(&clients.redline[s], depth).await?;
        let (rule, keys) = (rule.to_owned(), args.keys);
        tasks.push(tokio::spawn(async move {
            let mut next = (s as u64) << 40;
            for _ in 0..depth {
                requests.send(stream_request(&rule, next, keys)).await?;
                next += 1;
            }
            let (mut done, mut failed, mut pending) = (0u64, 0u64, depth);
            while pending > 0 {
                let Some(reply) = replies.message().await? else {
                    bail!("the stream ended with {pending} requests unanswered");
                };
                pending -= 1;
                done += 1;
                failed += u64::from(!stream_allowed(&reply));
                if Instant::now() < deadline {
                    requests.send(stream_request(&rule, next, keys)).await?;
                    next += 1;
                    pending += 1;
                }
            }
            anyhow::Ok((done, failed))
        }));
    }
    let (mut done, mut failed) = (0u64, 0u64);
    for task in tasks {
        let (d, f) = task.await??;
        done += d;
        failed += f;
    }
    Ok((done as f64 / started.elapsed().as_secs_f64(), done, failed))
}

/// What an open-loop run records: each decision's latency, how late each call was issued against the
/// schedule, and the failed calls.
struct Recorder {
    latency: Histogram<u64>,
    lag: Histogram<u64>,
    failed: u64,
}

/// The figures of an open-loop run: (p50 ms, p99 ms, p99 lag behind the schedule in ms, failed calls).
type LatencyFigures = (f64, f64, f64, u64);

impl Recorder {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            latency: Histogram::new(3)?,
            lag: Histogram::new(3)?,
            failed: 0,
        })
    }

    /// A call scheduled for `at` is being issued now.
    fn issued(&mut self, at: Instant) {
        let _ = self.lag.record(micros(at.elapsed()));
    }

    fn answered(&mut self, latency: Duration, ok: bool) {
        let _ = self.latency.record(micros(latency));
        self.failed += u64::from(!ok);
    }

    fn figures(&self) -> LatencyFigures {
        let ms = |h: &Histogram<u64>, q| h.value_at_quantile(q) as f64 / 1000.0;
        (
            ms(&self.latency, 0.50),
            ms(&self.latency, 0.99),
            ms(&self.lag, 0.99),
            self.failed,
        )
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Open loop over one CheckStream: as [`latency`], with each reply matched to its request by order.
async fn stream_latency(
    clients: &Clients,
    rule: &str,
    args: &BenchArgs,
) -> anyhow::Result<LatencyFigures> {
    let mut schedule = pace(args.rate, args.rate * args.latency_seconds);
    let (requests, mut replies) = open_stream(&clients.redline[0], 1024).await?;
    let mut issued_at = std::collections::VecDeque::new();
    let mut recorder = Recorder::new()?;
    let mut issued = 0u64;
    let mut scheduling = true;
    while scheduling || !issued_at.is_empty() {
        tokio::select! {
            at = schedule.recv(), if scheduling => match at {
                Some(at) => {
                    recorder.issued(at);
                    let request = stream_request(rule, 1_000_000_000 + issued, args.keys);
                    requests.send(request).await?;
                    issued_at.push_back(Instant::now());
                    issued += 1;
                }
                None => scheduling = false,
            },
            reply = replies.message() => {
                let Some(reply) = reply? else { bail!("the stream ended early") };
                let Some(at) = issued_at.pop_front() else { bail!("a reply without a request") };
                recorder.answered(at.elapsed(), stream_allowed(&reply));
            }
        }
    }
    Ok(recorder.figures())
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

/// The schedule of an open-loop run: `total` instants `1/rate` apart, each sent when it comes.
///
/// A thread sleeping to each instant keeps the schedule to tens of µs. Tokio's timer has a resolution of
/// 1 ms: an `interval` shorter than that fires in bursts (five calls at once every millisecond at 5,000/s),
/// and each burst queues behind itself in the client, the service and Redis, which is the benchmark's doing,
/// not the service's.
fn pace(rate: u64, total: u64) -> tokio::sync::mpsc::UnboundedReceiver<Instant> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    std::thread::spawn(move || {
        // Linux lets a sleeping thread wake up to 50 µs late by default (timer slack); 1 µs keeps the
        // schedule. Where it cannot be set the lateness only adds to the figures.
        let _ = nix::sys::prctl::set_timerslack(1_000);
        let start = Instant::now();
        for k in 0..total {
            let at = start + period.mul_f64(k as f64);
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if tx.send(at).is_err() {
                break;
            }
        }
    });
    rx
}

/// Open loop at `rate` per second. Each call is issued when [`pace`] says, and its latency runs from that moment to its answer, as a
/// client's own instrumentation would see it. How late calls were issued against the schedule (the pacing
/// thread's wake-up plus this runtime's) is reported beside it: a client that falls behind would otherwise
/// lower the offered rate unnoticed.
async fn latency(
    clients: &Clients,
    scenario: &str,
    args: &BenchArgs,
) -> anyhow::Result<LatencyFigures> {
    let mut schedule = pace(args.rate, args.rate * args.latency_seconds);
    let mut inflight = FuturesUnordered::new();
    let mut recorder = Recorder::new()?;
    let mut issued = 0u64;
    loop {
        tokio::select! {
            Some(at) = schedule.recv() => {
                recorder.issued(at);
                let call = call(clients, scenario, 1_000_000_000 + issued, args.keys);
                let issued_at = Instant::now();
                inflight.push(async move { (call.await, issued_at.elapsed()) });
                issued += 1;
            }
            Some((ok, elapsed)) = inflight.next() => recorder.answered(elapsed, ok),
            else => break,
        }
    }
    Ok(recorder.figures())
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

fn median(values: Vec<f64>) -> f64 {
    redline_testkit::median(values).unwrap_or(f64::NAN)
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
    if let Some(unknown) = args
        .scenarios
        .iter()
        .find(|s| !SCENARIOS.contains(&s.as_str()))
    {
        bail!(
            "unknown scenario {unknown:?}; the scenarios are {}",
            SCENARIOS.join(", ")
        );
    }
    let (_private, url) = match &args.redis_url {
        Some(url) => (None, url.clone()),
        None => {
            let redis = RedisServer::start();
            let url = redis.url();
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
                // The service's default level, as deployed.
                .env("RUST_LOG", "info")
                .stdout(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("starting the rate-limit service")?;
            (Some(child), None)
        }
        None => {
            let args = <redline_ratelimit::Args as clap::Parser>::try_parse_from(
                std::iter::once("bench".to_owned()).chain(flags),
            )?;
            let no_env = std::collections::HashMap::<String, String>::new();
            let config = redline_ratelimit::Config::from_args(args, &no_env)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let task = tokio::spawn(redline_ratelimit::run(config, listener, shutdown.clone()));
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
    let engine_client = redline_ratelimit::store::redis::connect(&url, timeout)?;
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
            let (r, done, f1) = tokio::spawn(async move {
                if let Some(rule) = stream_rule(&s) {
                    stream_throughput(&c, rule, &a).await
                } else {
                    Ok(throughput(&c, &s, &a).await)
                }
            })
            .await??;
            let after = script_totals(&redis).await;
            let (c, s, a) = (clients.clone(), scenario.clone(), args.clone());
            let (l50, l99, lag, f2) = tokio::spawn(async move {
                if let Some(rule) = stream_rule(&s) {
                    stream_latency(&c, rule, &a).await
                } else {
                    latency(&c, &s, &a).await
                }
            })
            .await??;
            eprintln!(
                "run {run}: {scenario:<14} {r:>9.0}/s  p50 {l50:.3} ms  p99 {l99:.3} ms  \
                 (issued behind schedule: p99 {lag:.3} ms)"
            );
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
        "{:<14} {:>12} {:>10} {:>12} {:>12} {:>9} {:>10} {:>10}",
        "scenario", "decisions/s", "ratio", "p50 ms", "p99 ms", "failures", "script µs", "per call"
    );
    println!(
        "{:<14} {:>12} {:>10} {:>12} {:>12} {:>9} {:>10} {:>10}",
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
            "{:<14} {rps:>12.0} {:>9.0}% {:>12.3} {:>12.3} {:>9} {script_us:>10} {per_call:>10}",
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The schedule is the offered load: instants `1/rate` apart, none released before its time (a timer
    /// coarser than the period would release several at once, early).
    #[tokio::test]
    async fn the_schedule_releases_each_instant_on_time() {
        let mut schedule = pace(5_000, 100);
        let mut instants = Vec::new();
        while let Some(at) = schedule.recv().await {
            assert!(Instant::now() >= at, "released early");
            instants.push(at);
        }
        assert_eq!(instants.len(), 100);
        for (k, at) in instants.iter().enumerate() {
            let offset = at.duration_since(instants[0]).as_secs_f64();
            assert!(
                (offset - k as f64 / 5_000.0).abs() < 1e-6,
                "instant {k} at {offset}"
            );
        }
    }
}
