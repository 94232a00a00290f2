//! Process plumbing shared by the redline binaries.
//!
//! Nothing here is domain-specific:
//! - [`telemetry`]: logs (text, or JSON when `REDLINE_LOG_FORMAT=json`), OpenTelemetry traces and W3C trace
//!   context propagation;
//! - [`admin`]: the admin port with Prometheus `/metrics`, `/healthz` and `/readyz`;
//! - [`clock`]: the wall clock, for what is not on Redis's clock;
//! - [`grpc`]: the gRPC servers' shutdown drain (readiness NOT_SERVING, then a delay) and optional reflection;
//! - [`shutdown_on_signal`]: SIGTERM/SIGINT cancel a [`CancellationToken`]; a second signal exits at once;
//! - [`redact_url`], [`resolve_redis_url`], [`parse_duration`], [`ConfigErrors`]: configuration helpers.

pub mod admin;
pub mod clock;
pub mod grpc;
pub mod telemetry;

use tokio_util::sync::CancellationToken;

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

/// Exit code for configuration errors (`EX_USAGE` from sysexits.h).
pub const EXIT_USAGE: i32 = 64;

/// Log format selected by `REDLINE_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// Parses `text` or `json` (anything else falls back to text).
    pub fn parse(value: Option<&str>) -> Self {
        match value {
            Some(v) if v.eq_ignore_ascii_case("json") => Self::Json,
            _ => Self::Text,
        }
    }
}

/// Returns a token cancelled on the first SIGTERM or SIGINT; a second signal exits the process at once.
///
/// Kubernetes sends SIGTERM when it stops a pod and SIGKILL after `terminationGracePeriodSeconds`: the first
/// signal starts a graceful drain, and an operator who presses Ctrl-C twice means "now".
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received; draining (send it again to exit at once)");
        cancel.cancel();
        wait_for_signal().await;
        tracing::warn!("second shutdown signal: exiting now");
        #[allow(clippy::exit)] // The operator asked twice; there is nothing left to unwind for.
        std::process::exit(130);
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_and_keeps_the_rest() {
        assert_eq!(
            redact_url("redis://:s3cret@h:6379/0"),
            "redis://:***@h:6379/0"
        );
        assert_eq!(redact_url("redis://u:p@h/1"), "redis://u:***@h/1");
        assert_eq!(redact_url("redis://token@h"), "redis://***@h");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn log_format_defaults_to_text() {
        assert_eq!(LogFormat::parse(Some("JSON")), LogFormat::Json);
        assert_eq!(LogFormat::parse(Some("pretty")), LogFormat::Text);
        assert_eq!(LogFormat::parse(None), LogFormat::Text);
    }
}

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

/// The default Redis URL when nothing is configured.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// Resolves the Redis URL: the flag, else `REDIS_URL`, else the Celery variables the original used
/// (`CELERY_BROKER_URL`, then `CELERY_RESULT_BACKEND`), else the default. Returns the URL and where it came
/// from, so the binary can log which setting won.
pub fn resolve_redis_url(flag: Option<&str>, env: &dyn Env) -> (String, &'static str) {
    if let Some(url) = flag.filter(|u| !u.is_empty()) {
        return (url.to_owned(), "--redis-url");
    }
    for name in ["REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"] {
        if let Some(url) = env.get(name) {
            return (url, name);
        }
    }
    (DEFAULT_REDIS_URL.to_owned(), "default")
}

/// Parses a duration such as `30s`, `500ms`, `2m` or a plain number of seconds (`1.5`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(std::time::Duration::from_secs_f64(secs));
        }
        return Err(format!("'{s}' is not a valid duration"));
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
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("'{s}' is not a valid duration"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
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

    #[test]
    fn redis_url_precedence_includes_celery_names() {
        let mut env = HashMap::new();
        env.insert("CELERY_RESULT_BACKEND".to_owned(), "redis://c:1".to_owned());
        assert_eq!(
            resolve_redis_url(None, &env),
            ("redis://c:1".to_owned(), "CELERY_RESULT_BACKEND")
        );
        env.insert("CELERY_BROKER_URL".to_owned(), "redis://b:1".to_owned());
        assert_eq!(resolve_redis_url(None, &env).1, "CELERY_BROKER_URL");
        env.insert("REDIS_URL".to_owned(), "redis://a:1".to_owned());
        assert_eq!(resolve_redis_url(None, &env).1, "REDIS_URL");
        assert_eq!(resolve_redis_url(Some("redis://f"), &env).1, "--redis-url");
        assert_eq!(resolve_redis_url(None, &HashMap::new()).1, "default");
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
    }
}
