//! Gateway configuration: flags with environment fallbacks, validated all at once.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args as ClapArgs, Parser};
use redline_ratelimit::limits::{LimitDef, parse_flask_limits};
use redline_runtime::{ConfigErrors, Env};

use crate::routes::ROUTES;

/// Command-line flags of `redline-gateway`.
#[derive(Debug, Clone, Parser, Default)]
#[command(
    name = "redline-gateway",
    version,
    about = "REST gateway: the REDLINE /tasks JSON API over TaskService."
)]
pub struct Cli {
    /// Gateway flags.
    #[command(flatten)]
    pub args: Args,
}

/// Flags of the gateway, shared with `redline up`.
#[derive(Debug, Clone, ClapArgs, Default)]
pub struct Args {
    /// Address to serve HTTP on [default: 0.0.0.0:8080].
    #[arg(long, env = "REDLINE_GATEWAY_LISTEN")]
    pub listen: Option<String>,
    /// Address of the admin port (Prometheus /metrics, /healthz, /readyz), such as 0.0.0.0:9464 [default: none].
    #[arg(long, env = "REDLINE_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// TaskService URL [default: http://127.0.0.1:50051].
    #[arg(long, env = "REDLINE_TASKS_URL")]
    pub tasks_url: Option<String>,
    /// RateLimitService URL [default: http://127.0.0.1:50052]; `none` disables rate limiting.
    #[arg(long, env = "REDLINE_RATELIMIT_URL")]
    pub ratelimit_url: Option<String>,
    /// Limits of every /tasks route, per client, in Flask-Limiter notation [default: "200 per day; 50 per hour"].
    #[arg(long, env = "REDLINE_GATEWAY_DEFAULT_LIMITS")]
    pub default_limits: Option<String>,
    /// Per-route limits, `"METHOD /path=LIMITS"`, such as `"POST /tasks/submit=10 per minute"`; repeatable.
    #[arg(
        long = "route-limit",
        env = "REDLINE_GATEWAY_ROUTE_LIMITS",
        value_delimiter = '|'
    )]
    pub route_limits: Vec<String>,
    /// What to do when RateLimitService is unreachable: `local` (in-process limiter), `open` or `closed` [default: local].
    #[arg(long, env = "REDLINE_GATEWAY_RATELIMIT_FAILURE_MODE")]
    pub ratelimit_failure_mode: Option<String>,
    /// `X-RateLimit-Reset` as `epoch` seconds (Flask-Limiter) or `delta` seconds [default: epoch].
    #[arg(long, env = "REDLINE_GATEWAY_RESET_HEADER")]
    pub reset_header: Option<String>,
    /// Peers whose `X-Forwarded-For` is honoured (IP addresses, comma separated).
    #[arg(long, env = "REDLINE_GATEWAY_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
    /// File of API keys, one per line; when set (or REDLINE_GATEWAY_API_KEYS is), /tasks requires a key.
    #[arg(long, env = "REDLINE_GATEWAY_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// Deadline of each TaskService call [default: 800ms].
    #[arg(long, env = "REDLINE_GATEWAY_GRPC_TIMEOUT")]
    pub grpc_timeout: Option<String>,
    /// Deadline of each RateLimitService check before the failure mode applies [default: 250ms].
    #[arg(long, env = "REDLINE_GATEWAY_RATELIMIT_TIMEOUT")]
    pub ratelimit_timeout: Option<String>,
    /// Largest accepted request body in bytes [default: 1048576].
    #[arg(long, env = "REDLINE_GATEWAY_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<String>,
    /// After SIGTERM, how long to keep serving while readiness reports NOT_SERVING, so load balancers and
    /// Kubernetes endpoints stop sending new calls before the listener closes (a preStop pause without a
    /// shell) [default: 0s].
    #[arg(long, env = "REDLINE_SHUTDOWN_DELAY")]
    pub shutdown_delay: Option<String>,
    /// How long in-flight requests may take to finish on shutdown [default: 10s].
    #[arg(long, env = "REDLINE_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<String>,
}

/// Behaviour while RateLimitService cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// Decide with an in-process fixed-window limiter (per gateway process).
    Local,
    /// Allow every request.
    Open,
    /// Refuse every request with 503.
    Closed,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// HTTP address.
    pub listen: SocketAddr,
    /// Admin port (metrics), when enabled.
    pub metrics_listen: Option<SocketAddr>,
    /// TaskService URL.
    pub tasks_url: String,
    /// RateLimitService URL; `None` disables rate limiting.
    pub ratelimit_url: Option<String>,
    /// Limits of routes without their own.
    pub default_limits: Vec<LimitDef>,
    /// Limits per route, keyed by `"METHOD /path"` as in [`ROUTES`].
    pub route_limits: BTreeMap<String, Vec<LimitDef>>,
    /// Behaviour while RateLimitService is unreachable.
    pub failure_mode: FailureMode,
    /// `X-RateLimit-Reset` as delta seconds instead of epoch seconds.
    pub reset_delta: bool,
    /// Peers allowed to set `X-Forwarded-For`.
    pub trusted_proxies: Vec<IpAddr>,
    /// Accepted API keys; empty means no authentication.
    pub api_keys: Vec<String>,
    /// Deadline of TaskService calls.
    pub grpc_timeout: Duration,
    /// Deadline of RateLimitService checks.
    pub ratelimit_timeout: Duration,
    /// Largest accepted body.
    pub max_body: usize,
    /// Serving on after SIGTERM, not ready, before the listener closes.
    pub shutdown_delay: Duration,
    /// Drain deadline.
    pub shutdown_grace: Duration,
}

fn parse_limits(text: &str) -> Result<Vec<LimitDef>, String> {
    parse_flask_limits(text, redline_ratelimit::limits::Algorithm::FixedWindow)
        .map_err(|e| e.to_string())
}

impl Config {
    /// Validates flags, falling back to `env`; reports every problem at once.
    pub fn from_args(args: Args, env: &dyn Env) -> Result<Self, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let listen_raw = args.listen.unwrap_or_else(|| "0.0.0.0:8080".to_owned());
        let listen = listen_raw.parse().unwrap_or_else(|_| {
            errors.push(format!(
                "--listen: '{listen_raw}' is not an address such as 0.0.0.0:8080"
            ));
            SocketAddr::from(([0, 0, 0, 0], 8080))
        });
        let metrics_listen = errors.address("metrics-listen", args.metrics_listen.as_deref());
        let tasks_url = args
            .tasks_url
            .unwrap_or_else(|| "http://127.0.0.1:50051".to_owned());
        if tonic::transport::Endpoint::from_shared(tasks_url.clone()).is_err() {
            errors.push(format!("--tasks-url: '{tasks_url}' is not a URL"));
        }
        let ratelimit_url = match args.ratelimit_url.as_deref() {
            Some("none" | "") => None,
            Some(u) => Some(u.to_owned()),
            None => Some("http://127.0.0.1:50052".to_owned()),
        };
        if let Some(u) = &ratelimit_url
            && tonic::transport::Endpoint::from_shared(u.clone()).is_err()
        {
            errors.push(format!("--ratelimit-url: '{u}' is not a URL"));
        }
        let default_text = args
            .default_limits
            .unwrap_or_else(|| "200 per day; 50 per hour".to_owned());
        let default_limits = parse_limits(&default_text).unwrap_or_else(|e| {
            errors.push(format!("--default-limits: {e}"));
            Vec::new()
        });
        let mut route_limits = BTreeMap::new();
        for item in &args.route_limits {
            let Some((route, text)) = item.split_once('=') else {
                errors.push(format!(
                    "--route-limit: '{item}' is not \"METHOD /path=LIMITS\""
                ));
                continue;
            };
            let route = route.trim();
            if !ROUTES.iter().any(|r| r.key() == route) {
                errors.push(format!("--route-limit: unknown route '{route}'"));
                continue;
            }
            match parse_limits(text) {
                Ok(l) => {
                    route_limits.insert(route.to_owned(), l);
                }
                Err(e) => errors.push(format!("--route-limit {route}: {e}")),
            }
        }
        let failure_mode = match args.ratelimit_failure_mode.as_deref() {
            None | Some("local") => FailureMode::Local,
            Some("open") => FailureMode::Open,
            Some("closed") => FailureMode::Closed,
            Some(other) => {
                errors.push(format!(
                    "--ratelimit-failure-mode: '{other}' is not local, open or closed"
                ));
                FailureMode::Local
            }
        };
        let reset_delta = match args.reset_header.as_deref() {
            None | Some("epoch") => false,
            Some("delta") => true,
            Some(other) => {
                errors.push(format!("--reset-header: '{other}' is not epoch or delta"));
                false
            }
        };
        let mut trusted_proxies = Vec::new();
        for p in args
            .trusted_proxies
            .iter()
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())
        {
            match p.parse() {
                Ok(ip) => trusted_proxies.push(ip),
                Err(_) => errors.push(format!("--trusted-proxies: '{p}' is not an IP address")),
            }
        }
        let mut api_keys: Vec<String> = env
            .get("REDLINE_GATEWAY_API_KEYS")
            .map(|v| v.split(',').map(|k| k.trim().to_owned()).collect())
            .unwrap_or_default();
        if let Some(path) = &args.api_keys_file {
            match std::fs::read_to_string(path) {
                Ok(text) => api_keys.extend(text.lines().map(|l| l.trim().to_owned())),
                Err(e) => errors.push(format!("--api-keys-file {}: {e}", path.display())),
            }
        }
        api_keys.retain(|k| !k.is_empty() && !k.starts_with('#'));
        let mut duration = |name: &str, raw: Option<String>, default: Duration| {
            errors.duration(name, raw.as_deref(), default, true)
        };
        let grpc_timeout = duration(
            "grpc-timeout",
            args.grpc_timeout,
            Duration::from_millis(800),
        );
        let ratelimit_timeout = duration(
            "ratelimit-timeout",
            args.ratelimit_timeout,
            Duration::from_millis(250),
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
        let max_body = match args.max_body_bytes.as_deref().map(str::parse::<usize>) {
            None => 1 << 20,
            Some(Ok(n)) if (1024..=64 << 20).contains(&n) => n,
            Some(_) => {
                errors.push("--max-body-bytes: must be a number of bytes from 1024 to 67108864");
                1 << 20
            }
        };
        errors.finish(Self {
            listen,
            metrics_listen,
            tasks_url,
            ratelimit_url,
            default_limits,
            route_limits,
            failure_mode,
            reset_delta,
            trusted_proxies,
            api_keys,
            grpc_timeout,
            ratelimit_timeout,
            max_body,
            shutdown_delay,
            shutdown_grace,
        })
    }

    /// The limits of a route.
    pub fn limits_for(&self, route_key: &str) -> &[LimitDef] {
        self.route_limits
            .get(route_key)
            .map_or(&self.default_limits, Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn defaults() {
        let c = Config::from_args(Args::default(), &HashMap::new()).map_err(|e| e.to_string());
        assert_eq!(c.as_ref().map(|c| c.listen.port()), Ok(8080));
        assert_eq!(c.as_ref().map(|c| c.default_limits.len()), Ok(2));
        assert_eq!(c.as_ref().map(|c| c.failure_mode), Ok(FailureMode::Local));
    }

    #[test]
    fn all_errors_together() {
        let args = Args {
            listen: Some("nowhere".into()),
            default_limits: Some("many per fortnight".into()),
            route_limits: vec!["GET /nope=1 per day".into()],
            ratelimit_failure_mode: Some("maybe".into()),
            grpc_timeout: Some("0s".into()),
            ..Args::default()
        };
        assert_eq!(
            Config::from_args(args, &HashMap::new())
                .err()
                .map(|e| e.0.len()),
            Some(5)
        );
    }

    #[test]
    fn route_limits_override_defaults() {
        let args = Args {
            route_limits: vec!["POST /tasks/submit=10 per minute".into()],
            ..Args::default()
        };
        let c = Config::from_args(args, &HashMap::new()).map_err(|e| e.to_string());
        assert_eq!(
            c.as_ref().map(|c| c.limits_for("POST /tasks/submit").len()),
            Ok(1)
        );
        assert_eq!(
            c.as_ref().map(|c| c.limits_for("GET /tasks/list").len()),
            Ok(2)
        );
    }
}
