//! RateLimitService: Redis-backed rate limits over gRPC and Envoy RLS v3.
//!
//! Every limit of a request is decided by one atomic Lua script in Redis (fixed window, sliding window
//! counter or GCRA), all-or-nothing, with Redis's clock. Rules come from an envoyproxy/ratelimit-style YAML
//! file, watched and reloaded; callers may also bring their own limits. When Redis is away, each limit follows
//! its failure mode (`error`, `open`, `closed`, `local`) within the decision timeout.
//!
//! # Layout
//! - [`limits`]: limit definitions, algorithms, failure modes, Flask-Limiter notation.
//! - [`rules`]: the YAML rule file and descriptor matching.
//! - [`store`]: counter stores; [`store::keys`] owns the Redis key layout, [`store::scripts`] the Lua,
//!   [`store::model`] the reference arithmetic, [`store::memory`] the bounded in-process fallback.
//! - [`limiter`]: the decision engine (resolution, `replaces`, timeouts, failure modes).
//! - [`grpc`]: the redline and Envoy gRPC services and the error → status mapping.
//! - `main.rs`: wiring only.

pub mod grpc;
pub mod limiter;
pub mod limits;
pub mod rules;
pub mod store;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use fred::interfaces::ClientLike;
use redline_proto::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer as EnvoyServer;
use redline_proto::redline::ratelimit::v1::rate_limit_service_server::RateLimitServiceServer as RedlineServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

use crate::limiter::Limiter;
use crate::rules::{RuleSet, RulesError};
use crate::store::keys::{KeyError, KeySpace};
use crate::store::redis::{RedisStore, TimeMode};

/// Service configuration: flags with environment fallbacks.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "redline-ratelimit",
    version,
    about = "Rate-limit decisions over gRPC and Envoy RLS v3"
)]
pub struct Config {
    /// Address to listen on (0.0.0.0 so Kubernetes probes reach the pod IP).
    #[arg(
        long,
        env = "REDLINE_RATELIMIT_LISTEN",
        default_value = "0.0.0.0:50052"
    )]
    pub listen: SocketAddr,
    /// Address of the admin port (Prometheus /metrics, /healthz, /readyz), such as 0.0.0.0:9464 [default: none].
    #[arg(long, env = "REDLINE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Redis URL; a password in it is only ever logged redacted.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379/0")]
    pub redis_url: String,
    /// Rule file or directory (envoyproxy/ratelimit YAML); watched and reloaded on change.
    #[arg(long, env = "REDLINE_RATELIMIT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Prefix of every Redis key.
    #[arg(
        long,
        env = "REDLINE_RATELIMIT_KEY_PREFIX",
        default_value = "redline:rl"
    )]
    pub key_prefix: String,
    /// Longest a decision waits for Redis before the failure modes apply (Envoy's default budget is 20 ms).
    #[arg(long, env = "REDLINE_RATELIMIT_TIMEOUT_MS", default_value_t = 20)]
    pub timeout_ms: u64,
    /// Clock of the scripts: `redis` (TIME) or `client` (for managed Redis that rejects TIME in scripts).
    #[arg(
        long,
        env = "REDLINE_RATELIMIT_TIME_MODE",
        value_enum,
        default_value = "redis"
    )]
    pub time_mode: TimeMode,
    /// Most counters kept in process memory by `local` limits during an outage.
    #[arg(
        long,
        env = "REDLINE_RATELIMIT_LOCAL_MAX_KEYS",
        default_value_t = 100_000
    )]
    pub local_max_keys: usize,
    /// How often the rule file is checked for changes.
    #[arg(
        long,
        env = "REDLINE_RATELIMIT_WATCH_INTERVAL_MS",
        default_value_t = 1000
    )]
    pub watch_interval_ms: u64,
    /// After SIGTERM, how long to keep serving while readiness reports NOT_SERVING, so load balancers and
    /// Kubernetes endpoints stop sending new calls before the listener closes (a preStop pause without a
    /// shell), such as `5s`.
    #[arg(long, env = "REDLINE_SHUTDOWN_DELAY", default_value = "0s", value_parser = redline_runtime::parse_duration)]
    pub shutdown_delay: Duration,
    /// Do not serve gRPC reflection (it publishes the whole schema; production overlays turn it off).
    #[arg(long, env = "REDLINE_DISABLE_REFLECTION")]
    pub disable_reflection: bool,
}

impl Config {
    /// Checks everything clap cannot, reporting every problem at once.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.timeout_ms == 0 {
            problems.push("--timeout-ms must be at least 1".to_owned());
        }
        if let Err(e) = KeySpace::new(&self.key_prefix) {
            problems.push(format!("--key-prefix: {e}"));
        }
        if let Err(e) = fred::types::config::Config::from_url(&self.redis_url) {
            problems.push(format!(
                "--redis-url {}: {e}",
                redline_runtime::redact_url(&self.redis_url)
            ));
        }
        if self.watch_interval_ms == 0 {
            problems.push("--watch-interval-ms must be at least 1".to_owned());
        }
        if let Some(path) = &self.config
            && let Err(e) = RuleSet::load(path)
        {
            problems.push(format!("--config: {e}"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The decision timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The rule file is invalid.
    #[error(transparent)]
    Rules(#[from] RulesError),
    /// The key prefix is invalid.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The Redis URL or client setup is invalid.
    #[error("redis client: {0}")]
    Redis(#[from] fred::error::Error),
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// Reflection descriptors could not be registered.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The admin port could not be opened.
    #[error(transparent)]
    Admin(#[from] redline_runtime::admin::AdminError),
}

/// Health names probed by Kubernetes and clients.
const READINESS_NAMES: [&str; 3] = [
    "readiness",
    "redline.ratelimit.v1.RateLimitService",
    "envoy.service.ratelimit.v3.RateLimitService",
];

/// Runs the service on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let rules = match &config.config {
        Some(path) => RuleSet::load(path)?,
        None => RuleSet::default(),
    };
    let keys = KeySpace::new(&config.key_prefix)?;
    let client = store::redis::connect(&config.redis_url, config.timeout())?;
    tracing::info!(
        redis = %redline_runtime::redact_url(&config.redis_url),
        listen = ?listener.local_addr().ok(),
        rules = rules.list().len(),
        timeout_ms = config.timeout_ms,
        time_mode = ?config.time_mode,
        "rate-limit service starting"
    );
    let store = RedisStore::new(client.clone(), config.time_mode, config.timeout());
    // The listener is already bound: callers that connect meanwhile wait in the backlog, and then get
    // decisions from Redis rather than failure-mode answers from a client still connecting.
    if !store.warm_up(Duration::from_secs(2)).await {
        tracing::warn!(
            "redis not reachable at start-up; limits follow their failure modes until it is"
        );
    }
    let limiter = Arc::new(Limiter::new(
        rules,
        config.config.clone(),
        keys,
        Arc::new(store.clone()),
        config.timeout(),
        config.local_max_keys,
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("liveness", ServingStatus::Serving)
        .await;
    let tasks = shutdown.child_token();
    let readiness = redline_runtime::admin::Readiness::default();
    if let Some(addr) = config.metrics_listen {
        redline_runtime::admin::spawn(addr, readiness.clone(), None, tasks.clone()).await?;
    }
    tokio::spawn(probe_redis(
        store,
        limiter.clone(),
        health.clone(),
        readiness,
        tasks.clone(),
    ));
    if let Some(path) = config.config.clone() {
        tokio::spawn(watch_rules(
            path,
            limiter.clone(),
            Duration::from_millis(config.watch_interval_ms),
            tasks.clone(),
        ));
    }

    let reflection = redline_runtime::grpc::reflection(
        config.disable_reflection,
        &[redline_proto::FILE_DESCRIPTOR_SET],
    )?;

    // Cancelled when the listener closes: CheckStream calls end then, letting the drain finish.
    let closing = CancellationToken::new();
    let drained = {
        let closing = closing.clone();
        let drain = redline_runtime::grpc::drain(
            health.clone(),
            &READINESS_NAMES,
            shutdown.clone(),
            config.shutdown_delay,
        );
        async move {
            drain.await;
            closing.cancel();
        }
    };
    let result = tonic::transport::Server::builder()
        // A span per call that can be followed (the caller traces, or spans are exported), parented on the
        // caller's `traceparent`; other decisions skip a span's cost.
        .trace_fn(redline_runtime::telemetry::followed_grpc_server_span)
        .add_service(health_service)
        .add_optional_service(reflection)
        .add_service(RedlineServer::new(grpc::RedlineService::new(
            limiter.clone(),
            closing,
        )))
        .add_service(EnvoyServer::new(grpc::EnvoyService::new(limiter)))
        .serve_with_incoming_shutdown(
            // The server's own tcp_nodelay setting does not apply to an injected listener: without
            // TCP_NODELAY, Nagle's algorithm holds small HTTP/2 frames back and adds milliseconds per decision.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            drained,
        )
        .await;
    tasks.cancel();
    let _ = client.quit().await;
    tracing::info!("rate-limit service stopped");
    result.map_err(RunError::from)
}

/// Keeps readiness in step with Redis: NOT_SERVING while Redis is away, unless no rule needs it.
async fn probe_redis(
    store: RedisStore,
    limiter: Arc<Limiter>,
    health: tonic_health::server::HealthReporter,
    readiness: redline_runtime::admin::Readiness,
    stop: CancellationToken,
) {
    let mut last: Option<ServingStatus> = None;
    let mut failures = 0u32;
    loop {
        let up = store.ping(Duration::from_millis(250)).await;
        // Two failed probes in a row before declaring Redis down: one lost PING is not an outage.
        failures = if up { 0 } else { failures + 1 };
        if up || failures >= 2 {
            limiter.set_store_available(up);
        }
        let ready = limiter.store_available() || limiter.rules().survives_store_outage();
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        readiness.set(ready && !stop.is_cancelled());
        if last != Some(status) {
            for name in READINESS_NAMES {
                health.set_service_status(name, status).await;
            }
            last = Some(status);
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Reloads the rules when the file's content changes. Content, not mtime: Kubernetes ConfigMap updates swap
/// symlinks, and editors may keep timestamps.
async fn watch_rules(
    path: PathBuf,
    limiter: Arc<Limiter>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut seen = fingerprint(&path);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let now = fingerprint(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match limiter.reload() {
            Ok(rules) => tracing::info!(rules = rules.list().len(), "rule file changed; reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "rule file changed but was rejected; previous rules stay in force")
            }
        }
    }
}

/// Hash of the rule file's (or directory's) names and contents; `None` when unreadable.
pub fn fingerprint(path: &Path) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        entries.sort();
        for p in entries {
            p.hash(&mut hasher);
            std::fs::read(&p).ok()?.hash(&mut hasher);
        }
    } else {
        std::fs::read(path).ok()?.hash(&mut hasher);
    }
    Some(hasher.finish())
}
