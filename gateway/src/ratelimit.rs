//! Rate limiting of the /tasks routes through RateLimitService, with the gateway's own limits sent in every
//! decision (over `CheckStream`, see [`crate::decision_stream`]), and the configured failure mode when the
//! service cannot be reached.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;
use redline_proto::redline::ratelimit::v1 as pb;
use redline_ratelimit::limits::{Algorithm, LimitDef, Mode, flask_text};
use redline_ratelimit::store::memory::MemoryStore;
use redline_ratelimit::store::{Apply, BatchItem};
use serde_json::json;

use crate::AppState;
use crate::config::{Config, FailureMode};
use crate::decision_stream::DecisionStreams;
use crate::error::ApiError;

/// One limit's state after a decision.
#[derive(Debug, Clone)]
pub struct LimitView {
    /// Flask-Limiter's rendering, such as `50 per 1 hour`.
    pub text: String,
    /// Requests per window.
    pub limit: u64,
    /// Requests left in the window.
    pub remaining: u64,
    /// Time until the window resets.
    pub reset_after: Duration,
    /// Window length.
    pub window: Duration,
    /// This limit refused the request.
    pub refused: bool,
}

/// A rate-limit decision.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The request may proceed.
    pub allowed: bool,
    /// Every limit applied.
    pub limits: Vec<LimitView>,
    /// When a refused request would be allowed.
    pub retry_after: Duration,
}

/// Most counters the local fallback keeps in memory while RateLimitService is away.
const LOCAL_MAX_KEYS: usize = 100_000;

/// The limiter shared by all requests.
pub struct RateLimiter {
    streams: Option<DecisionStreams>,
    timeout: Duration,
    failure_mode: FailureMode,
    /// RateLimitService's bounded in-process store, deciding while the service is away (per gateway process).
    local: MemoryStore,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("timeout", &self.timeout)
            .field("failure_mode", &self.failure_mode)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

fn duration(d: Option<prost_types::Duration>) -> Duration {
    d.map_or(Duration::ZERO, |d| {
        Duration::try_from(d).unwrap_or(Duration::ZERO)
    })
}

/// Keeps a key component free of the separator and of spaces, so `route|client` cannot be forged by a client
/// whose API key contains `|`.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || "/._-:{}".contains(c) {
            out.push(c);
        } else {
            for b in c.to_string().bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

impl RateLimiter {
    /// A limiter calling `client`; `None` disables rate limiting.
    pub fn new(client: Option<crate::Backend>, config: &Config) -> Self {
        Self {
            streams: client.map(DecisionStreams::new),
            timeout: config.ratelimit_timeout,
            failure_mode: config.failure_mode,
            local: MemoryStore::new(LOCAL_MAX_KEYS),
        }
    }

    /// Decides one request of `client` on `route`. `Ok(None)`: no limiting applied (disabled or failed open).
    /// `Err`: failed closed.
    pub async fn check(
        &self,
        route: &str,
        client: &str,
        limits: &[LimitDef],
    ) -> Result<Option<Decision>, ApiError> {
        let Some(streams) = &self.streams else {
            return Ok(None);
        };
        if limits.is_empty() {
            return Ok(None);
        }
        let key = format!("gateway|{}|{}", escape(route), escape(client));
        let specs = limits
            .iter()
            .map(|l| pb::LimitSpec {
                name: flask_text(l.limit, l.window_ms),
                limit: l.limit,
                window: prost_types::Duration::try_from(Duration::from_millis(l.window_ms)).ok(),
                algorithm: pb::Algorithm::FixedWindow as i32,
                // RateLimitService without its Redis answers UNAVAILABLE, so the gateway's own failure mode
                // is the one policy for both outages (the service's and its Redis's).
                failure_mode: pb::FailureMode::Error as i32,
                ..pb::LimitSpec::default()
            })
            .collect();
        let message = pb::CheckRequest {
            key: key.clone(),
            limits: specs,
            ..Default::default()
        };
        // Each attempt takes the next lane: a retry after a broken stream goes elsewhere.
        let decide = async {
            match streams.check(message.clone()).await {
                // A stream broken by a restart of RateLimitService fails once; the lane reopens it.
                Err(s) if s.code() == tonic::Code::Unavailable => streams.check(message).await,
                other => other,
            }
        };
        match tokio::time::timeout(self.timeout, decide).await {
            Ok(Ok(resp)) => Ok(Some(Decision {
                allowed: resp.allowed,
                retry_after: duration(resp.retry_after),
                limits: resp
                    .limits
                    .into_iter()
                    .map(|l| LimitView {
                        text: l.name,
                        limit: l.limit,
                        remaining: l.remaining,
                        reset_after: duration(l.reset_after),
                        window: duration(l.window),
                        refused: l.refused,
                    })
                    .collect(),
            })),
            // A caller's mistake in the limits is a configuration error, not a reason to stop serving.
            Ok(Err(status)) => {
                tracing::warn!(code = ?status.code(), error = %status.message(), "rate-limit check failed");
                self.fallback(&key, limits).await
            }
            Err(_) => {
                tracing::warn!("rate-limit check timed out");
                self.fallback(&key, limits).await
            }
        }
    }

    async fn fallback(&self, key: &str, limits: &[LimitDef]) -> Result<Option<Decision>, ApiError> {
        match self.failure_mode {
            FailureMode::Open => Ok(None),
            FailureMode::Closed => Err(ApiError::unavailable(
                "Rate limiting not available; request refused",
            )),
            FailureMode::Local => Ok(Some(self.local_check(key, limits))),
        }
    }

    /// Decides with the in-process store, all or nothing like RateLimitService: a refused request consumes
    /// no limit.
    fn local_check(&self, key: &str, limits: &[LimitDef]) -> Decision {
        let items: Vec<BatchItem> = limits
            .iter()
            .map(|l| BatchItem {
                key: format!("{key}|{}|{}", l.limit, l.window_ms),
                algorithm: Algorithm::FixedWindow,
                limit: l.limit,
                window_ms: l.window_ms,
                cost: 1,
                mode: Mode::Enforced,
            })
            .collect();
        let outcome =
            self.local
                .decide_at(&items, Apply::Consume, redline_runtime::clock::epoch_us());
        let mut retry_after = Duration::ZERO;
        let views = limits
            .iter()
            .zip(&outcome.verdicts)
            .map(|(l, v)| {
                if !v.allowed {
                    retry_after = retry_after.max(Duration::from_millis(v.retry_after_ms));
                }
                LimitView {
                    text: flask_text(l.limit, l.window_ms),
                    limit: l.limit,
                    remaining: v.remaining,
                    reset_after: Duration::from_millis(v.reset_after_ms),
                    window: Duration::from_millis(l.window_ms),
                    refused: !v.allowed,
                }
            })
            .collect();
        Decision {
            allowed: outcome.allowed,
            limits: views,
            retry_after,
        }
    }
}

/// The client a request is counted for: its API key when it sent one, else its IP, taking `X-Forwarded-For`
/// only from a trusted proxy.
pub fn client_id(headers: &HeaderMap, peer: Option<SocketAddr>, trusted: &[IpNet]) -> String {
    if let Some(key) = crate::auth::presented_key(headers) {
        return format!("key:{}", fingerprint(key));
    }
    let Some(peer) = peer else {
        return "ip:unknown".to_owned();
    };
    // A dual-stack listener sees IPv4 peers as `::ffff:a.b.c.d`; compare and count them as IPv4.
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut ip = peer.ip().to_canonical();
    if is_trusted(&ip)
        && let Some(xff) = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok())
    {
        // Walk from the nearest hop; the first address not of a trusted proxy is the client.
        for hop in xff.rsplit(',') {
            match hop.trim().parse::<IpAddr>().map(|h| h.to_canonical()) {
                Ok(h) if is_trusted(&h) => ip = h,
                Ok(h) => {
                    ip = h;
                    break;
                }
                Err(_) => break,
            }
        }
    }
    format!("ip:{ip}")
}

/// A stable, non-reversible name for an API key, so raw keys never reach Redis or the logs.
fn fingerprint(key: &str) -> String {
    // FNV-1a 64: stable across processes and releases, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn header_value(v: impl ToString) -> HeaderValue {
    HeaderValue::from_str(&v.to_string()).unwrap_or(HeaderValue::from_static("0"))
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).try_into().unwrap_or(u64::MAX)
}

/// The headers of a decision: Flask-Limiter's `X-RateLimit-*` for the most restrictive limit, the IETF
/// `RateLimit` / `RateLimit-Policy`, and `Retry-After` when refused.
pub fn headers(decision: &Decision, reset_delta: bool) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    let current = decision
        .limits
        .iter()
        .filter(|l| l.refused)
        .max_by_key(|l| l.reset_after)
        .or_else(|| decision.limits.iter().min_by_key(|l| l.remaining));
    if let Some(l) = current {
        let reset = ceil_secs(l.reset_after);
        let now = redline_runtime::clock::epoch_secs();
        out.push((
            HeaderName::from_static("x-ratelimit-limit"),
            header_value(l.limit),
        ));
        out.push((
            HeaderName::from_static("x-ratelimit-remaining"),
            header_value(l.remaining),
        ));
        out.push((
            HeaderName::from_static("x-ratelimit-reset"),
            header_value(if reset_delta { reset } else { now + reset }),
        ));
        out.push((
            HeaderName::from_static("ratelimit"),
            header_value(format!(
                "\"{}\";r={};t={reset}",
                policy_name(l),
                l.remaining
            )),
        ));
    }
    let policy = decision
        .limits
        .iter()
        .map(|l| {
            format!(
                "\"{}\";q={};w={}",
                policy_name(l),
                l.limit,
                l.window.as_secs()
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    if !policy.is_empty() {
        out.push((
            HeaderName::from_static("ratelimit-policy"),
            header_value(policy),
        ));
    }
    if !decision.allowed {
        out.push((
            header::RETRY_AFTER,
            header_value(ceil_secs(decision.retry_after)),
        ));
    }
    out
}

fn policy_name(l: &LimitView) -> String {
    format!("{}-{}s", l.limit, l.window.as_secs())
}

/// Middleware on every /tasks route.
pub async fn middleware(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = match request.extensions().get::<MatchedPath>() {
        Some(p) => format!("{} {}", request.method(), p.as_str()),
        None => return next.run(request).await,
    };
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let client = client_id(request.headers(), peer, &state.config.trusted_proxies);
    let limits = state.config.limits_for(&route);
    let decision = match state.limiter.check(&route, &client, limits).await {
        Ok(Some(d)) => d,
        Ok(None) => return next.run(request).await,
        Err(e) => return e.into_response(),
    };
    let hdrs = headers(&decision, state.config.reset_delta);
    let mut response = if decision.allowed {
        next.run(request).await
    } else {
        let refused = decision
            .limits
            .iter()
            .filter(|l| l.refused)
            .max_by_key(|l| l.reset_after)
            .map_or_else(String::new, |l| l.text.clone());
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            tonic::Code::ResourceExhausted,
            format!("Rate limit exceeded: {refused}"),
        )
        .with_field("retry_after", json!(ceil_secs(decision.retry_after)))
        .into_response()
    };
    for (k, v) in hdrs {
        response.headers_mut().insert(k, v);
    }
    response
}

/// A limiter shared by clones of the state.
pub type SharedLimiter = Arc<RateLimiter>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.2.3.4, 10.0.0.2"),
        );
        let proxy: SocketAddr = "10.0.0.1:5000".parse().unwrap_or_else(|_| unreachable!());
        let trusted: Vec<IpNet> = vec![
            "10.0.0.1/32".parse().unwrap_or_else(|_| unreachable!()),
            "10.0.0.2/32".parse().unwrap_or_else(|_| unreachable!()),
        ];
        assert_eq!(client_id(&h, Some(proxy), &trusted), "ip:1.2.3.4");
        assert_eq!(client_id(&h, Some(proxy), &[]), "ip:10.0.0.1");
    }

    #[test]
    fn trusted_proxies_as_cidr_ranges() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.9, 10.1.2.3, 10.200.0.7"),
        );
        let pods: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap_or_else(|_| unreachable!())];
        // Every hop inside 10.0.0.0/8 is a proxy; the first address outside it is the client.
        let proxy: SocketAddr = "10.9.9.9:443".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(client_id(&h, Some(proxy), &pods), "ip:203.0.113.9");
        // The same proxy seen through a dual-stack listener.
        let mapped: SocketAddr = "[::ffff:10.9.9.9]:443"
            .parse()
            .unwrap_or_else(|_| unreachable!());
        assert_eq!(client_id(&h, Some(mapped), &pods), "ip:203.0.113.9");
        // A peer outside the range cannot choose its own client address.
        let outsider: SocketAddr = "198.51.100.1:443"
            .parse()
            .unwrap_or_else(|_| unreachable!());
        assert_eq!(client_id(&h, Some(outsider), &pods), "ip:198.51.100.1");
    }

    #[test]
    fn escaping_keeps_components_apart() {
        assert_eq!(escape("a|b c"), "a%7Cb%20c");
    }

    #[tokio::test]
    async fn local_fallback_counts_and_refuses() {
        let config = Config::from_args(
            crate::config::Args {
                default_limits: Some("2 per hour".into()),
                ratelimit_url: "http://127.0.0.1:9".into(),
                ..Default::default()
            },
            &HashMap::<String, String>::new(),
        );
        let Ok(config) = config else { panic!("config") };
        let limiter = RateLimiter::new(None, &config);
        let limits = config.default_limits.clone();
        assert!(limiter.local_check("k", &limits).allowed);
        assert!(limiter.local_check("k", &limits).allowed);
        let third = limiter.local_check("k", &limits);
        assert!(!third.allowed);
        assert!(third.retry_after > Duration::from_secs(3500));
    }
}
