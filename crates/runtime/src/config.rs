//! Configuration of the binaries: flags with environment fallbacks, parsed by clap, then validated all at once
//! into each service's typed `Config`, so an operator fixes every problem in one go.
//!
//! The flags more than one binary takes are declared here once ([`RedisArgs`], [`NamespaceArgs`],
//! [`AdminArgs`], [`ServerArgs`], [`GrpcArgs`]) and flattened into each binary's own: one spelling, one
//! environment variable, one default (written in the `default_value`, so `--help` shows it). Values stay
//! text until validation, so that a bad duration and a bad address are reported together rather than one per
//! run; validated configurations hold typed values (`Duration`, `SocketAddr`, [`RedisUrl`]).
//!
//! Exit codes, the same for every binary: 0 after a clean stop, [`EXIT_USAGE`] (64) for a configuration
//! problem, [`EXIT_START`] (69) when the service could not start (its address taken, a Redis that may evict
//! keys) or stopped with an error, 130 after a second shutdown signal.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// Environment variables that the binaries read outside their flags: the Redis URL fallbacks and telemetry.
/// Deployment files may set these on any redline container.
pub const PROCESS_ENV: &[&str] = &[
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "CELERY_RESULT_BACKEND",
    "REDLINE_LOG_FORMAT",
    "RUST_LOG",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_SDK_DISABLED",
    // Trust store for `rediss://` (a private CA's bundle), read by the TLS client.
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// Exit code of a configuration problem (`EX_USAGE` in sysexits.h).
pub const EXIT_USAGE: u8 = 64;

/// Exit code of a service that could not start or stopped with an error (`EX_UNAVAILABLE`).
pub const EXIT_START: u8 = 69;

/// Where configuration values come from besides flags: the process environment in production, a map in
/// tests (so tests never mutate the process environment).
pub trait Env {
    /// The value of variable `name`, if set and not empty.
    fn get(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Env for std::collections::HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        self.get(name).filter(|v| !v.is_empty()).cloned()
    }
}

/// Parses a duration such as `30s`, `500ms`, `2m` or a plain number of seconds (`1.5`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return std::time::Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("'{s}' is not a valid duration"));
    }
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| s.split_at(i))
        .ok_or_else(|| format!("'{s}' is not a valid duration"))?;
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a valid duration (try 30s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => {
            return Err(format!(
                "'{s}' has an unknown unit '{unit}' (use ms, s, m, h or d)"
            ));
        }
    };
    // Negative, infinite and NaN are refused; so is more than u64::MAX seconds (1e30s would overflow).
    std::time::Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("'{s}' is not a valid duration"))
}

/// Configuration problems, all of them, so an operator fixes everything in one go.
#[derive(Debug, Default)]
pub struct ConfigErrors(pub Vec<String>);

impl ConfigErrors {
    /// Records a problem.
    pub fn push(&mut self, problem: impl Into<String>) {
        self.0.push(problem.into());
    }

    /// Parses the duration flag `--name` (`raw`, or `default` when absent); a malformed value, or zero when
    /// `positive`, is recorded as a problem and `default` returned so validation can go on.
    pub fn duration(
        &mut self,
        name: &str,
        raw: Option<&str>,
        default: std::time::Duration,
        positive: bool,
    ) -> std::time::Duration {
        match raw.map(parse_duration) {
            None => default,
            Some(Ok(d)) if positive && d.is_zero() => {
                self.push(format!("--{name}: must be positive"));
                default
            }
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.push(format!("--{name}: {e}"));
                default
            }
        }
    }

    /// Parses the duration flag `--name` whose value (or clap default) is `raw`; a malformed value, or zero
    /// when `positive`, is recorded and zero returned so validation can go on.
    pub fn duration_of(&mut self, name: &str, raw: &str, positive: bool) -> Duration {
        self.duration(name, Some(raw), Duration::ZERO, positive)
    }

    /// Parses the address flag `--name`; a malformed value is recorded and `0.0.0.0:0` returned.
    pub fn socket(&mut self, name: &str, raw: &str) -> SocketAddr {
        raw.parse().unwrap_or_else(|_| {
            self.push(format!(
                "--{name}: '{raw}' is not an address such as 0.0.0.0:8080"
            ));
            SocketAddr::from(([0, 0, 0, 0], 0))
        })
    }

    /// Parses the optional address flag `--name`; a malformed value is recorded as a problem.
    pub fn address(&mut self, name: &str, raw: Option<&str>) -> Option<std::net::SocketAddr> {
        let raw = raw.filter(|r| !r.is_empty())?;
        match raw.parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.push(format!(
                    "--{name}: '{raw}' is not an address such as 0.0.0.0:9464"
                ));
                None
            }
        }
    }

    /// `Ok(value)` when there were no problems.
    pub fn finish<T>(self, value: T) -> Result<T, Self> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[cfg(test)]
mod config_tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::Duration;

    fn resolve(flag: Option<&str>, env: &HashMap<String, String>) -> (String, &'static str) {
        let args = RedisArgs {
            redis_url: flag.map(str::to_owned),
            ..RedisArgs::default()
        };
        let c = args.resolve(env, &mut ConfigErrors::default());
        (c.url.expose().to_owned(), c.source)
    }

    #[test]
    fn redis_url_precedence_includes_celery_names() {
        let mut env = HashMap::new();
        env.insert("CELERY_RESULT_BACKEND".to_owned(), "redis://c:1".to_owned());
        assert_eq!(
            resolve(None, &env),
            ("redis://c:1".to_owned(), "CELERY_RESULT_BACKEND")
        );
        env.insert("CELERY_BROKER_URL".to_owned(), "redis://b:1".to_owned());
        assert_eq!(resolve(None, &env).1, "CELERY_BROKER_URL");
        env.insert("REDIS_URL".to_owned(), "redis://a:1".to_owned());
        assert_eq!(resolve(None, &env).1, "REDIS_URL");
        assert_eq!(resolve(Some("redis://f"), &env).1, "--redis-url");
        assert_eq!(resolve(None, &HashMap::new()).1, "default");
    }

    #[test]
    fn redis_urls_never_print_their_password() {
        let url = RedisUrl::from("redis://:s3cret@h:6379/0");
        assert_eq!(format!("{url:?}"), "RedisUrl(redis://:***@h:6379/0)");
        assert_eq!(url.to_string(), "redis://:***@h:6379/0");
        assert_eq!(url.expose(), "redis://:s3cret@h:6379/0");
        assert_eq!(
            redact_url("redis://:s3cret@h:6379/0"),
            "redis://:***@h:6379/0"
        );
        assert_eq!(redact_url("redis://u:p@h/1"), "redis://u:***@h/1");
        assert_eq!(redact_url("redis://token@h"), "redis://***@h");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact_url("not a url"), "not a url");
        let mut errors = ConfigErrors::default();
        RedisArgs {
            redis_url: Some("http://:s3cret@h".to_owned()),
            ..RedisArgs::default()
        }
        .resolve(&HashMap::new(), &mut errors);
        assert!(errors.0.iter().all(|e| !e.contains("s3cret")), "{errors}");
        assert_eq!(errors.0.len(), 1);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("3 weeks").is_err());
        // Beyond what a Duration holds: an error, not a panic.
        assert!(parse_duration("1e30").is_err());
        assert!(parse_duration("1e30s").is_err());
    }
}

/// Hides the password of a URL such as `redis://:secret@host:6379/0` → `redis://:***@host:6379/0`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let redacted = match userinfo.find(':') {
        Some(colon) => format!("{}:***", &userinfo[..colon]),
        None => "***".to_owned(),
    };
    format!("{}://{}@{}", &url[..scheme_end], redacted, &rest[at + 1..])
}

/// A Redis URL, which may carry a password: `{:?}` and `{}` show it redacted; [`RedisUrl::expose`] is for the
/// client that connects.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// The URL, password included.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisUrl({})", redact_url(&self.0))
    }
}

impl std::fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl From<&str> for RedisUrl {
    fn from(url: &str) -> Self {
        Self(url.to_owned())
    }
}

/// The Redis URL when nothing is configured.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// URL schemes the Redis client connects with.
const REDIS_SCHEMES: [&str; 5] = [
    "redis://",
    "rediss://",
    "redis-cluster://",
    "redis-sentinel://",
    "unix://",
];

/// Flags of every process that talks to Redis.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RedisArgs {
    /// Redis URL; else REDIS_URL, CELERY_BROKER_URL, CELERY_RESULT_BACKEND [default: redis://127.0.0.1:6379/0].
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Start even if Redis may evict keys (maxmemory-policy other than noeviction).
    #[arg(long, env = "REDLINE_ALLOW_EVICTING_REDIS")]
    pub allow_evicting_redis: bool,
}

/// Validated [`RedisArgs`].
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// The URL.
    pub url: RedisUrl,
    /// Where the URL came from (a flag or a variable name), for the start-up log.
    pub source: &'static str,
    /// Skip the eviction-policy check.
    pub allow_evicting: bool,
}

impl RedisArgs {
    /// The URL: the flag, else `REDIS_URL`, else the Celery variables the original used (`CELERY_BROKER_URL`,
    /// then `CELERY_RESULT_BACKEND`), else the default.
    pub fn resolve(&self, env: &dyn Env, errors: &mut ConfigErrors) -> RedisConfig {
        let (url, source) = self
            .redis_url
            .clone()
            .filter(|u| !u.is_empty())
            .map(|u| (u, "--redis-url"))
            .or_else(|| {
                ["REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"]
                    .into_iter()
                    .find_map(|name| env.get(name).map(|u| (u, name)))
            })
            .unwrap_or_else(|| (DEFAULT_REDIS_URL.to_owned(), "default"));
        if !REDIS_SCHEMES.iter().any(|s| url.starts_with(s)) {
            errors.push(format!(
                "{source}: '{}' is not a Redis URL ({})",
                redact_url(&url),
                REDIS_SCHEMES.join(", ")
            ));
        }
        RedisConfig {
            url: RedisUrl(url),
            source,
            allow_evicting: self.allow_evicting_redis,
        }
    }
}

/// The Redis key namespace TaskService and the workers share.
#[derive(Debug, Clone, clap::Args)]
pub struct NamespaceArgs {
    /// Redis key namespace shared by TaskService and the workers.
    #[arg(long, env = "REDLINE_NAMESPACE", default_value = "redline")]
    pub namespace: String,
}

impl Default for NamespaceArgs {
    fn default() -> Self {
        Self {
            namespace: "redline".to_owned(),
        }
    }
}

impl NamespaceArgs {
    /// The namespace, checked: not empty, no spaces.
    pub fn resolve(&self, errors: &mut ConfigErrors) -> String {
        if self.namespace.is_empty() || self.namespace.contains(char::is_whitespace) {
            errors.push("--namespace: must be non-empty without spaces");
        }
        self.namespace.clone()
    }
}

/// The admin port every process may open.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AdminArgs {
    /// Address of the admin port (Prometheus /metrics, /healthz, /readyz), such as 0.0.0.0:9464 [default: none].
    #[arg(long, env = "REDLINE_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

impl AdminArgs {
    /// The address, when one is given.
    pub fn resolve(&self, errors: &mut ConfigErrors) -> Option<SocketAddr> {
        errors.address("metrics-listen", self.metrics_listen.as_deref())
    }
}

/// Flags of the servers (TaskService, RateLimitService, the gateway): the admin port and the shutdown drain.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The admin port.
    #[command(flatten)]
    pub admin: AdminArgs,
    /// After SIGTERM, how long to keep serving while readiness reports NOT_SERVING, so load balancers and
    /// Kubernetes endpoints stop sending new calls before the listener closes (a preStop pause without a
    /// shell).
    #[arg(long, env = "REDLINE_SHUTDOWN_DELAY", default_value = "0s")]
    pub shutdown_delay: String,
    /// How long in-flight requests may take to finish on shutdown.
    #[arg(long, env = "REDLINE_SHUTDOWN_GRACE", default_value = "10s")]
    pub shutdown_grace: String,
}

impl Default for ServerArgs {
    fn default() -> Self {
        Self {
            admin: AdminArgs::default(),
            shutdown_delay: "0s".to_owned(),
            shutdown_grace: "10s".to_owned(),
        }
    }
}

/// Validated [`ServerArgs`].
#[derive(Debug, Clone, Copy)]
pub struct ServerConfig {
    /// Admin port, when enabled.
    pub metrics_listen: Option<SocketAddr>,
    /// Serving on after SIGTERM, not ready, before the listener closes.
    pub shutdown_delay: Duration,
    /// Drain deadline.
    pub shutdown_grace: Duration,
}

impl ServerArgs {
    /// Checks every value.
    pub fn resolve(&self, errors: &mut ConfigErrors) -> ServerConfig {
        ServerConfig {
            metrics_listen: self.admin.resolve(errors),
            shutdown_delay: errors.duration_of("shutdown-delay", &self.shutdown_delay, false),
            shutdown_grace: errors.duration_of("shutdown-grace", &self.shutdown_grace, true),
        }
    }
}

/// Flags of the gRPC servers.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct GrpcArgs {
    /// Do not serve gRPC reflection (it publishes the whole schema; production overlays turn it off).
    #[arg(long, env = "REDLINE_DISABLE_REFLECTION")]
    pub disable_reflection: bool,
}

/// Parses this process's command line into `A`: `--help` and `--version` print and exit 0; a malformed
/// command line prints clap's message and exits [`EXIT_USAGE`].
pub fn parse_args<A: clap::Parser>() -> Result<A, ExitCode> {
    A::try_parse().map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            ExitCode::from(EXIT_USAGE)
        } else {
            ExitCode::SUCCESS
        }
    })
}

/// A validated configuration, or every problem printed and [`EXIT_USAGE`].
pub fn valid<C>(config: Result<C, ConfigErrors>) -> Result<C, ExitCode> {
    config.map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(EXIT_USAGE)
    })
}

/// Binds a listener, or logs why not and gives [`EXIT_START`].
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ExitCode> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        tracing::error!(%addr, error = %e, "cannot listen");
        ExitCode::from(EXIT_START)
    })
}

/// The exit code of a service that ran: 0, or [`EXIT_START`] with the error and its sources logged.
pub fn finish<E: std::error::Error>(service: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %error_chain(&e), "{service} stopped");
            ExitCode::from(EXIT_START)
        }
    }
}

/// An error and its sources, `outer: inner: root`, for a log line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        // thiserror's `#[error("...: {0}")]` already printed a transparent source.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
