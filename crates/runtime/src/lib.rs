//! Process plumbing shared by the redline binaries.
//!
//! Nothing here is domain-specific:
//! - [`telemetry`]: logs (text, or JSON when `REDLINE_LOG_FORMAT=json`), OpenTelemetry traces and W3C trace
//!   context propagation;
//! - [`admin`]: the admin port with Prometheus `/metrics`, `/healthz` and `/readyz`;
//! - [`clock`]: the wall clock, for what is not on Redis's clock;
//! - [`redis`]: the eviction-policy check every process makes of its Redis;
//! - [`grpc`]: the gRPC servers' shutdown drain (readiness NOT_SERVING, then a delay) and optional reflection;
//! - [`shutdown_on_signal`]: SIGTERM/SIGINT cancel a [`CancellationToken`]; a second signal exits at once;
//! - [`config`]: the flags every binary shares, declared once, and how configuration is read: flags, then the
//!   environment, all problems reported together, exit codes.

pub mod admin;
pub mod clock;
pub mod config;
pub mod grpc;
pub mod redis;
pub mod telemetry;

pub use config::{
    ConfigErrors, EXIT_START, EXIT_USAGE, Env, ProcessEnv, RedisUrl, parse_duration, redact_url,
};

use tokio_util::sync::CancellationToken;

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

/// The body of every service binary's `main`: logs and traces for `service`, then `run` (configuration,
/// listener, the service until a signal), then the span exporter flushed. `run` gives the exit code, or an
/// early one as its `Err` (bad flags, an address taken). Binaries pass `run` boxed: its future is large.
pub async fn main(
    service: &'static str,
    run: impl std::future::Future<Output = Result<std::process::ExitCode, std::process::ExitCode>>,
) -> std::process::ExitCode {
    let telemetry = telemetry::init(service);
    let code = run.await.unwrap_or_else(|code| code);
    telemetry.shutdown();
    code
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_format_defaults_to_text() {
        assert_eq!(LogFormat::parse(Some("JSON")), LogFormat::Json);
        assert_eq!(LogFormat::parse(Some("pretty")), LogFormat::Text);
        assert_eq!(LogFormat::parse(None), LogFormat::Text);
    }
}
