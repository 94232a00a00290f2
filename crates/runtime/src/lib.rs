//! Process plumbing shared by the redline binaries.
//!
//! Nothing here is domain-specific:
//! - [`init_tracing`]: one place that sets up logging (text, or JSON when `REDLINE_LOG_FORMAT=json`);
//! - [`shutdown_on_signal`]: SIGTERM/SIGINT cancel a [`CancellationToken`]; a second signal exits at once;
//! - [`redact_url`]: a Redis URL with its password hidden, for logs.

use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

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

/// Installs the global tracing subscriber. `RUST_LOG` filters (default `info`).
///
/// Safe to call more than once: later calls are ignored, so tests that start several services in one process
/// don't fight over the global subscriber.
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
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
