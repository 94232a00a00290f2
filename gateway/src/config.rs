//! Gateway configuration: flags with environment fallbacks, validated all at once.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args as ClapArgs, Parser};
use ipnet::IpNet;
use redline_ratelimit::limits::{LimitDef, parse_flask_limits};
use redline_runtime::config::{ServerArgs, ServerConfig};
use redline_runtime::{ConfigErrors, Env};

use crate::auth::ApiKeys;

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

/// Flags of the gateway, shared with `redline serve gateway`.
#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// Address to serve HTTP on.
    #[arg(long, env = "REDLINE_GATEWAY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: String,
    /// Admin port and shutdown drain.
    #[command(flatten)]
    pub server: ServerArgs,
    /// TaskService URL.
    #[arg(
        long,
        env = "REDLINE_TASKS_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub tasks_url: String,
    /// RateLimitService URL; `none` disables rate limiting.
    #[arg(
        long,
        env = "REDLINE_RATELIMIT_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    pub ratelimit_url: String,
    /// Limits of every /tasks route, per client, in Flask-Limiter notation; replaces the limits file's
    /// `default` [default: "200 per day; 50 per hour"].
    #[arg(long, env = "REDLINE_GATEWAY_DEFAULT_LIMITS")]
    pub default_limits: Option<String>,
    /// Per-route limits, `"METHOD /path=LIMITS"`, such as `"POST /tasks/submit=10 per minute"`; repeatable.
    #[arg(
        long = "route-limit",
        env = "REDLINE_GATEWAY_ROUTE_LIMITS",
        value_delimiter = '|'
    )]
    pub route_limits: Vec<String>,
    /// YAML file of limits: `default: "200 per day; 50 per hour"` and `routes: {"POST /tasks/submit": "10 per
    /// minute"}`; `--default-limits` and `--route-limit` override its entries.
    #[arg(long, env = "REDLINE_GATEWAY_LIMITS_FILE")]
    pub limits_file: Option<PathBuf>,
    /// What to do when RateLimitService is unreachable: `local` (in-process limiter), `open` or `closed`.
    #[arg(
        long,
        env = "REDLINE_GATEWAY_RATELIMIT_FAILURE_MODE",
        default_value = "local"
    )]
    pub ratelimit_failure_mode: String,
    /// `X-RateLimit-Reset` as `epoch` seconds (Flask-Limiter) or `delta` seconds.
    #[arg(long, env = "REDLINE_GATEWAY_RESET_HEADER", default_value = "epoch")]
    pub reset_header: String,
    /// Peers whose `X-Forwarded-For` is honoured: IP addresses or CIDR ranges such as `10.0.0.0/8`, comma
    /// separated.
    #[arg(long, env = "REDLINE_GATEWAY_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
    /// File of API keys, one per line; when set (or REDLINE_GATEWAY_API_KEYS is), /tasks requires a key.
    #[arg(long, env = "REDLINE_GATEWAY_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// HTTP/2 connections to each backend, used in turn. Behind a Kubernetes ClusterIP Service, which balances
    /// connections rather than calls, several spread the calls over the backend's pods.
    #[arg(long, env = "REDLINE_GATEWAY_BACKEND_CONNECTIONS", default_value = "1")]
    pub backend_connections: String,
    /// Deadline of each TaskService call.
    #[arg(long, env = "REDLINE_GATEWAY_GRPC_TIMEOUT", default_value = "800ms")]
    pub grpc_timeout: String,
    /// Deadline of each RateLimitService check before the failure mode applies.
    #[arg(
        long,
        env = "REDLINE_GATEWAY_RATELIMIT_TIMEOUT",
        default_value = "250ms"
    )]
    pub ratelimit_timeout: String,
    /// Largest accepted request body in bytes.
    #[arg(
        long,
        env = "REDLINE_GATEWAY_MAX_BODY_BYTES",
        default_value = "1048576"
    )]
    pub max_body_bytes: String,
}

impl Default for Args {
    fn default() -> Self {
        Cli::parse_from(["redline-gateway"]).args
    }
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
    pub trusted_proxies: Vec<IpNet>,
    /// Accepted API keys; none means no authentication.
    pub api_keys: ApiKeys,
    /// HTTP/2 connections to each backend.
    pub backend_connections: usize,
    /// Deadline of TaskService calls.
    pub grpc_timeout: Duration,
    /// Deadline of RateLimitService checks.
    pub ratelimit_timeout: Duration,
    /// Largest accepted body.
    pub max_body: usize,
    /// Admin port and shutdown drain.
    pub server: ServerConfig,
}

/// The `--limits-file` document.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    /// Limits of routes without their own.
    default: Option<String>,
    /// `"METHOD /path"` → limits.
    #[serde(default)]
    routes: BTreeMap<String, String>,
}

impl LimitsFile {
    fn read(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        serde_yaml_ng::from_str(&text).map_err(|e| e.to_string())
    }
}

fn parse_limits(text: &str) -> Result<Vec<LimitDef>, String> {
    parse_flask_limits(text, redline_ratelimit::limits::Algorithm::FixedWindow)
        .map_err(|e| e.to_string())
}

impl Config {
    /// Validates flags, falling back to `env`; reports every problem at once.
    pub fn from_args(args: Args, env: &dyn Env) -> Result<Self, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let listen = errors.socket("listen", &args.listen);
        let server = args.server.resolve(&mut errors);
        let tasks_url = args.tasks_url;
        if tonic::transport::Endpoint::from_shared(tasks_url.clone()).is_err() {
            errors.push(format!("--tasks-url: '{tasks_url}' is not a URL"));
        }
        let ratelimit_url = match args.ratelimit_url.as_str() {
            "none" | "" => None,
            u => Some(u.to_owned()),
        };
        if let Some(u) = &ratelimit_url
            && tonic::transport::Endpoint::from_shared(u.clone()).is_err()
        {
            errors.push(format!("--ratelimit-url: '{u}' is not a URL"));
        }
        // Limits in order of precedence: built-in defaults, then the file, then flags and environment.
        let mut default_text = ("default", "200 per day; 50 per hour".to_owned());
        let mut route_texts: Vec<(String, String, String)> = Vec::new();
        if let Some(path) = &args.limits_file {
            match LimitsFile::read(path) {
                Ok(file) => {
                    let source = format!("--limits-file {}", path.display());
                    if let Some(text) = file.default {
                        default_text = ("--limits-file default", text);
                    }
                    route_texts.extend(
                        file.routes
                            .into_iter()
                            .map(|(route, text)| (source.clone(), route, text)),
                    );
                }
                Err(e) => errors.push(format!("--limits-file {}: {e}", path.display())),
            }
        }
        if let Some(text) = args.default_limits {
            default_text = ("--default-limits", text);
        }
        let default_limits = parse_limits(&default_text.1).unwrap_or_else(|e| {
            errors.push(format!("{}: {e}", default_text.0));
            Vec::new()
        });
        for item in &args.route_limits {
            match item.split_once('=') {
                Some((route, text)) => {
                    route_texts.push(("--route-limit".into(), route.into(), text.into()));
                }
                None => errors.push(format!(
                    "--route-limit: '{item}' is not \"METHOD /path=LIMITS\""
                )),
            }
        }
        let mut route_limits = BTreeMap::new();
        for (source, route, text) in route_texts {
            let route = route.trim();
            if !ROUTES.iter().any(|r| r.key() == route) {
                errors.push(format!("{source}: unknown route '{route}'"));
                continue;
            }
            match parse_limits(&text) {
                Ok(l) => {
                    route_limits.insert(route.to_owned(), l);
                }
                Err(e) => errors.push(format!("{source} {route}: {e}")),
            }
        }
        let failure_mode = match args.ratelimit_failure_mode.as_str() {
            "local" => FailureMode::Local,
            "open" => FailureMode::Open,
            "closed" => FailureMode::Closed,
            other => {
                errors.push(format!(
                    "--ratelimit-failure-mode: '{other}' is not local, open or closed"
                ));
                FailureMode::Local
            }
        };
        let reset_delta = match args.reset_header.as_str() {
            "epoch" => false,
            "delta" => true,
            other => {
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
            match (p.parse::<IpNet>(), p.parse::<IpAddr>()) {
                (Ok(net), _) => trusted_proxies.push(net.trunc()),
                (_, Ok(ip)) => trusted_proxies.push(IpNet::from(ip)),
                _ => errors.push(format!(
                    "--trusted-proxies: '{p}' is neither an IP address nor a CIDR range"
                )),
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
        let grpc_timeout = errors.duration_of("grpc-timeout", &args.grpc_timeout, true);
        let ratelimit_timeout =
            errors.duration_of("ratelimit-timeout", &args.ratelimit_timeout, true);
        let max_body = match args.max_body_bytes.parse::<usize>() {
            Ok(n) if (1024..=64 << 20).contains(&n) => n,
            _ => {
                errors.push("--max-body-bytes: must be a number of bytes from 1024 to 67108864");
                1 << 20
            }
        };
        let backend_connections = match args.backend_connections.parse() {
            Ok(n) if (1..=64).contains(&n) => n,
            _ => {
                errors.push("--backend-connections: must be a number from 1 to 64");
                1
            }
        };
        errors.finish(Self {
            listen,
            tasks_url,
            ratelimit_url,
            default_limits,
            route_limits,
            failure_mode,
            reset_delta,
            trusted_proxies,
            api_keys: ApiKeys::new(api_keys),
            backend_connections,
            grpc_timeout,
            ratelimit_timeout,
            max_body,
            server,
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
            listen: "nowhere".into(),
            default_limits: Some("many per fortnight".into()),
            route_limits: vec!["GET /nope=1 per day".into()],
            ratelimit_failure_mode: "maybe".into(),
            grpc_timeout: "0s".into(),
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
    fn limits_file_then_flags() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("limits.yaml");
        let write = |text: &str| std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        write(
            "default: 1000 per day\nroutes:\n  POST /tasks/submit: 10 per minute\n  GET /tasks/list: 5/second\n",
        );
        let args = Args {
            limits_file: Some(path.clone()),
            route_limits: vec!["GET /tasks/list=7 per hour".into()],
            ..Args::default()
        };
        let c = Config::from_args(args.clone(), &HashMap::new()).map_err(|e| e.to_string());
        let Ok(c) = c else { panic!("{c:?}") };
        let window = |route: &str| {
            c.limits_for(route)
                .iter()
                .map(|l| (l.limit, l.window_ms))
                .collect::<Vec<_>>()
        };
        assert_eq!(window("POST /tasks/submit"), vec![(10, 60_000)]);
        // A flag overrides the file's entry for the same route.
        assert_eq!(window("GET /tasks/list"), vec![(7, 3_600_000)]);
        // The file's default replaces the built-in one.
        assert_eq!(
            window("GET /tasks/status/{task_id}"),
            vec![(1000, 86_400_000)]
        );

        // Every problem of the file is reported, with the file's name.
        write("routes:\n  GET /nope: 1 per day\n  POST /tasks/submit: often\n");
        let errors = Config::from_args(args.clone(), &HashMap::new())
            .err()
            .map(|e| e.0)
            .unwrap_or_default();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors.iter().all(|e| e.contains("limits.yaml")),
            "{errors:?}"
        );
        write("defaults: 1 per day\n");
        let errors = Config::from_args(args, &HashMap::new())
            .err()
            .map(|e| e.0)
            .unwrap_or_default();
        assert!(
            errors.iter().any(|e| e.contains("unknown field")),
            "{errors:?}"
        );
    }

    #[test]
    fn trusted_proxies_take_addresses_and_ranges() {
        let args = Args {
            trusted_proxies: vec!["10.0.0.0/8".into(), "192.168.1.7".into(), "fd00::/8".into()],
            ..Args::default()
        };
        let c = Config::from_args(args, &HashMap::new()).map_err(|e| e.to_string());
        assert_eq!(
            c.map(|c| c
                .trusted_proxies
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()),
            Ok(vec![
                "10.0.0.0/8".into(),
                "192.168.1.7/32".into(),
                "fd00::/8".into()
            ])
        );
        let args = Args {
            trusted_proxies: vec!["10.0.0.0/33".into(), "proxy.local".into()],
            ..Args::default()
        };
        assert_eq!(
            Config::from_args(args, &HashMap::new())
                .err()
                .map(|e| e.0.len()),
            Some(2)
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
