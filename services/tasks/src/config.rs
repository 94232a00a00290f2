//! TaskService configuration: flags with environment fallbacks, validated all at once.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use redline_runtime::{ConfigErrors, Env, resolve_redis_url};

/// Command-line flags of `redline-tasks`.
#[derive(Debug, Clone, Parser, Default)]
#[command(
    name = "redline-tasks",
    version,
    about = "TaskService: submit, inspect, cancel and list redline tasks."
)]
pub struct Args {
    /// Address to serve gRPC on [default: 0.0.0.0:50051].
    #[arg(long, env = "REDLINE_TASKS_LISTEN")]
    pub listen: Option<String>,
    /// Address of the admin port (Prometheus /metrics, /healthz, /readyz), such as 0.0.0.0:9464 [default: none].
    #[arg(long, env = "REDLINE_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Redis URL (falls back to REDIS_URL, CELERY_BROKER_URL, CELERY_RESULT_BACKEND).
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Redis key namespace shared by the suite [default: redline].
    #[arg(long, env = "REDLINE_NAMESPACE")]
    pub namespace: Option<String>,
    /// Largest accepted task arguments, in bytes [default: 1048576].
    #[arg(long, env = "REDLINE_MAX_PAYLOAD_BYTES")]
    pub max_payload_bytes: Option<String>,
    /// How long finished task records and results are kept [default: 1d].
    #[arg(long, env = "REDLINE_RESULT_TTL")]
    pub result_ttl: Option<String>,
    /// How long an idempotency key maps to its task [default: 1d].
    #[arg(long, env = "REDLINE_IDEMPOTENCY_TTL")]
    pub idempotency_ttl: Option<String>,
    /// After SIGTERM, how long to keep serving while readiness reports NOT_SERVING, so load balancers and
    /// Kubernetes endpoints stop sending new calls before the listener closes (a preStop pause without a
    /// shell) [default: 0s].
    #[arg(long, env = "REDLINE_SHUTDOWN_DELAY")]
    pub shutdown_delay: Option<String>,
    /// How long in-flight requests may take to finish on shutdown [default: 10s].
    #[arg(long, env = "REDLINE_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<String>,
    /// Do not serve gRPC reflection (it publishes the whole schema; production overlays turn it off).
    #[arg(long, env = "REDLINE_DISABLE_REFLECTION")]
    pub disable_reflection: bool,
    /// Start even if Redis may evict keys (maxmemory-policy other than noeviction).
    #[arg(long, env = "REDLINE_ALLOW_EVICTING_REDIS")]
    pub allow_evicting_redis: bool,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// gRPC address.
    pub listen: SocketAddr,
    /// Admin port, when enabled.
    pub metrics_listen: Option<SocketAddr>,
    /// Redis URL.
    pub redis_url: String,
    /// Where the URL came from, for the start-up log.
    pub redis_url_source: &'static str,
    /// Key namespace.
    pub namespace: String,
    /// Largest accepted arguments.
    pub max_payload: usize,
    /// Retention of finished records.
    pub result_ttl: Duration,
    /// Lifetime of idempotency keys.
    pub idempotency_ttl: Duration,
    /// Serving on after SIGTERM, not ready, before the listener closes.
    pub shutdown_delay: Duration,
    /// Drain deadline.
    pub shutdown_grace: Duration,
    /// Skip the eviction-policy check.
    pub allow_evicting_redis: bool,
    /// Serve no gRPC reflection.
    pub disable_reflection: bool,
}

impl Config {
    /// Validates flags, falling back to `env`; reports every problem at once.
    pub fn from_args(args: Args, env: &dyn Env) -> Result<Self, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let (redis_url, redis_url_source) = resolve_redis_url(args.redis_url.as_deref(), env);
        let listen_raw = args.listen.unwrap_or_else(|| "0.0.0.0:50051".to_owned());
        let listen = listen_raw.parse().unwrap_or_else(|_| {
            errors.push(format!(
                "--listen: '{listen_raw}' is not an address such as 0.0.0.0:50051"
            ));
            SocketAddr::from(([0, 0, 0, 0], 50051))
        });
        let max_payload = match args.max_payload_bytes.as_deref().map(str::parse::<usize>) {
            None => 1 << 20,
            Some(Ok(n)) if (1024..=64 << 20).contains(&n) => n,
            Some(_) => {
                errors.push("--max-payload-bytes: must be a number of bytes from 1024 to 67108864");
                1 << 20
            }
        };
        let metrics_listen = errors.address("metrics-listen", args.metrics_listen.as_deref());
        let mut duration = |name: &str, raw: Option<String>, default: Duration| {
            errors.duration(name, raw.as_deref(), default, true)
        };
        let result_ttl = duration("result-ttl", args.result_ttl, Duration::from_secs(86_400));
        let idempotency_ttl = duration(
            "idempotency-ttl",
            args.idempotency_ttl,
            Duration::from_secs(86_400),
        );
        let shutdown_grace = duration(
            "shutdown-grace",
            args.shutdown_grace,
            Duration::from_secs(10),
        );
        let shutdown_delay = errors.duration(
            "shutdown-delay",
            args.shutdown_delay.as_deref(),
            Duration::ZERO,
            false,
        );
        let namespace = args.namespace.unwrap_or_else(|| "redline".to_owned());
        if namespace.is_empty() || namespace.contains(char::is_whitespace) {
            errors.push("--namespace: must be non-empty without spaces");
        }
        errors.finish(Self {
            listen,
            metrics_listen,
            redis_url,
            redis_url_source,
            namespace,
            max_payload,
            result_ttl,
            idempotency_ttl,
            shutdown_delay,
            shutdown_grace,
            allow_evicting_redis: args.allow_evicting_redis,
            disable_reflection: args.disable_reflection,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn defaults() {
        let c = Config::from_args(Args::default(), &HashMap::new()).map_err(|e| e.to_string());
        assert_eq!(c.as_ref().map(|c| c.listen.port()), Ok(50051));
        assert_eq!(c.as_ref().map(|c| c.max_payload), Ok(1 << 20));
    }

    #[test]
    fn all_errors_together() {
        let args = Args {
            listen: Some("nowhere".into()),
            max_payload_bytes: Some("-1".into()),
            result_ttl: Some("0s".into()),
            ..Args::default()
        };
        assert_eq!(
            Config::from_args(args, &HashMap::new())
                .err()
                .map(|e| e.0.len()),
            Some(3)
        );
    }
}
