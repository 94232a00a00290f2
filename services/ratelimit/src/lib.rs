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
use redline_runtime::config::{GrpcArgs, RedisArgs, RedisConfig, ServerArgs, ServerConfig};
use redline_runtime::{ConfigErrors, Env};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

use crate::limiter::Limiter;
use crate::rules::{RuleSet, RulesError};
use crate::store::keys::{KeyError, KeySpace};
use crate::store::redis::{RedisStore, TimeMode};

/// Command-line flags of `redline-ratelimit`. Every flag has an environment variable.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "redline-ratelimit",
    version,
    about = "Rate-limit decisions over gRPC and Envoy RLS v3"
)]
pub struct Args {
    /// Address to listen on (0.0.0.0 so Kubernetes probes reach the pod IP).
    #[arg(
        long,
        env = "REDLINE_RATELIMIT_LISTEN",
        default_value = "0.0.0.0:50052"
    )]
    pub listen: String,
    /// Redis.
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Admin port and shutdown drain.
    #[command(flatten)]
    pub server: ServerArgs,
    /// gRPC server options.
    #[command(flatten)]
    pub grpc: GrpcArgs,
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
    #[arg(long, env = "REDLINE_RATELIMIT_TIMEOUT", default_value = "20ms")]
    pub timeout: String,
    /// Clock of the scripts: `redis` (TIME) or `client` (for managed Redis that rejects TIME in scripts).
    #[arg(long, env = "REDLINE_RATELIMIT_TIME_MODE", default_value = "redis")]
    pub time_mode: String,
    /// Most counters kept in process memory by `local` limits during an outage.
    #[arg(
        long,
        env = "REDLINE_RATELIMIT_LOCAL_MAX_KEYS",
        default_value = "100000"
    )]
    pub local_max_keys: String,
    /// How often the rule file is checked for changes.
    #[arg(long, env = "REDLINE_RATELIMIT_WATCH_INTERVAL", default_value = "1s")]
    pub watch_interval: String,
}

impl Default for Args {
    fn default() -> Self {
        Self::parse_from(["redline-ratelimit"])
    }
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// gRPC address.
    pub listen: SocketAddr,
    /// Redis.
    pub redis: RedisConfig,
    /// Admin port and shutdown drain.
    pub server: ServerConfig,
    /// Serve no gRPC reflection.
    pub disable_reflection: bool,
    /// Rule file or directory.
    pub config: Option<PathBuf>,
    /// Prefix of every Redis key.
    pub key_prefix: String,
    /// Decision budget.
    pub timeout: Duration,
    /// Clock of the scripts.
    pub time_mode: TimeMode,
    /// Bound of the in-memory fallback.
    pub local_max_keys: usize,
    /// Rule file polling period.
    pub watch_interval: Duration,
}

impl Config {
    /// Validates flags, falling back to `env`; reports every problem at once, a rule file's included.
    pub fn from_args(args: Args, env: &dyn Env) -> Result<Self, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let listen = errors.socket("listen", &args.listen);
        let redis = args.redis.resolve(env, &mut errors);
        if let Err(e) = fred::types::config::Config::from_url(redis.url.expose()) {
            errors.push(format!("{} {}: {e}", redis.source, redis.url));
        }
        let server = args.server.resolve(&mut errors);
        if let Err(e) = KeySpace::new(&args.key_prefix) {
            errors.push(format!("--key-prefix: {e}"));
        }
        let timeout = errors.duration_of("timeout", &args.timeout, true);
        let watch_interval = errors.duration_of("watch-interval", &args.watch_interval, true);
        let time_mode = match args.time_mode.as_str() {
            "redis" => TimeMode::Redis,
            "client" => TimeMode::Client,
            other => {
                errors.push(format!("--time-mode: '{other}' is not redis or client"));
                TimeMode::Redis
            }
        };
        let local_max_keys = args.local_max_keys.parse::<usize>().unwrap_or_else(|_| {
            errors.push("--local-max-keys: must be a number");
            100_000
        });
        if let Some(path) = &args.config
            && let Err(e) = RuleSet::load(path)
        {
            errors.push(format!("--config: {e}"));
        }
        errors.finish(Self {
            listen,
            redis,
            server,
            disable_reflection: args.grpc.disable_reflection,
            config: args.config,
            key_prefix: args.key_prefix,
            timeout,
            time_mode,
            local_max_keys,
            watch_interval,
        })
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
    /// Redis may evict keys.
    #[error(transparent)]
    Eviction(#[from] redline_runtime::redis::EvictionPolicyError),
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
    let client = store::redis::connect(config.redis.url.expose(), config.timeout)?;
    tracing::info!(
        redis = %config.redis.url,
        listen = ?listener.local_addr().ok(),
        rules = rules.list().len(),
        timeout = ?config.timeout,
        time_mode = ?config.time_mode,
        "rate-limit service starting"
    );
    let store = RedisStore::new(client.clone(), config.time_mode, config.timeout);
    // The listener is already bound: callers that connect meanwhile wait in the backlog, and then get
    // decisions from Redis rather than failure-mode answers from a client still connecting.
    if !store.warm_up(Duration::from_secs(2)).await {
        tracing::warn!(
            "redis not reachable at start-up; limits follow their failure modes until it is"
        );
    } else if !config.redis.allow_evicting {
        // Evicted counters would forget limits early. An unreachable Redis is not refused: limits follow
        // their failure modes until it answers.
        match redline_runtime::redis::check_eviction_policy(&client).await {
            Err(e @ redline_runtime::redis::EvictionPolicyError::Evicting(_)) => {
                return Err(e.into());
            }
            Err(redline_runtime::redis::EvictionPolicyError::Unreachable(_)) | Ok(()) => {}
        }
    }
    let limiter = Arc::new(Limiter::new(
        rules,
        config.config.clone(),
        keys,
        Arc::new(store.clone()),
        config.timeout,
        config.local_max_keys,
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("liveness", ServingStatus::Serving)
        .await;
    let tasks = shutdown.child_token();
    let readiness = redline_runtime::admin::Readiness::default();
    if let Some(addr) = config.server.metrics_listen {
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
            config.watch_interval,
            tasks.clone(),
        ));
    }

    let reflection = redline_runtime::grpc::reflection(
        config.disable_reflection,
        &[redline_proto::FILE_DESCRIPTOR_SET],
        &[
            "redline.ratelimit.v1.RateLimitService",
            "envoy.service.ratelimit.v3.RateLimitService",
        ],
    )?;

    // Cancelled when the listener closes: CheckStream calls end then, letting the drain finish.
    let closing = CancellationToken::new();
    let drained = {
        let closing = closing.clone();
        let drain = redline_runtime::grpc::drain(
            health.clone(),
            &READINESS_NAMES,
            shutdown.clone(),
            config.server.shutdown_delay,
        );
        async move {
            drain.await;
            closing.cancel();
        }
    };
    let serve = tonic::transport::Server::builder()
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
        );
    let result = redline_runtime::grpc::with_drain_deadline(
        serve,
        &shutdown,
        config.server.shutdown_delay,
        config.server.shutdown_grace,
    )
    .await
    .unwrap_or(Ok(()));
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
