//! REST gateway: the original REDLINE `/tasks` JSON API served over TaskService, rate limited through
//! RateLimitService.
//!
//! # Layout
//! - [`config`]: flags and environment, validated together.
//! - [`routes`]: the route table and handlers (JSON ↔ TaskService, through `redline_proto::json`).
//! - [`http_rules`]: the protos' `google.api.http` rules, which the route table must match.
//! - [`error`]: the gRPC-code → HTTP table and the JSON error body.
//! - [`ratelimit`]: per-route, per-client limits checked with RateLimitService, and the failure mode;
//!   [`decision_stream`]: those decisions over long-lived `CheckStream` calls.
//! - [`auth`]: optional API keys.
//! - [`openapi`]: the document served at `/openapi.json`.

pub mod auth;
pub mod config;
pub mod decision_stream;
pub mod error;
pub mod http_rules;
pub mod openapi;
pub mod ratelimit;
pub mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use redline_proto::tasks::task_service_client::TaskServiceClient;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;
use tracing::Instrument;

pub use config::{Args, Config};

/// Shared by every request.
#[derive(Clone)]
pub struct AppState {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// TaskService connections.
    pub tasks: Backend,
    /// Rate limiter.
    pub limiter: Arc<ratelimit::RateLimiter>,
    /// Cleared on SIGTERM: `/readyz` (here and on the admin port) fails while requests are still served.
    pub serving: redline_runtime::admin::Readiness,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A few HTTP/2 connections to one backend, taken in turn by successive calls.
///
/// One connection is one TCP stream: behind a Kubernetes ClusterIP Service it reaches a single pod. Several
/// connections spread the calls over the backend's pods. On one host, one connection is cheapest: every
/// extra connection adds a connection task and its wake-ups. Each connects lazily, so the gateway starts (and
/// answers 503) while a backend is still away, and a broken one reconnects by itself.
#[derive(Clone)]
pub struct Backend {
    channels: Arc<[Channel]>,
    next: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("connections", &self.channels.len())
            .finish_non_exhaustive()
    }
}

impl Backend {
    /// `connections` lazily connected channels to `url`.
    pub fn new(url: &str, connections: usize) -> Result<Self, tonic::transport::Error> {
        let endpoint = Endpoint::from_shared(url.to_owned())?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(5));
        let channels: Vec<Channel> = (0..connections.max(1))
            .map(|_| endpoint.connect_lazy())
            .collect();
        Ok(Self {
            channels: channels.into(),
            next: Arc::default(),
        })
    }

    /// Every connection.
    pub fn channels(&self) -> &[Channel] {
        &self.channels
    }

    /// The channel for the next call.
    pub fn channel(&self) -> Channel {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        self.channels[i].clone()
    }
}

impl AppState {
    /// Builds clients for the configured backends (no connection is made yet).
    pub fn new(config: Config) -> Result<Self, tonic::transport::Error> {
        let connections = config.backend_connections;
        let tasks = Backend::new(&config.tasks_url, connections)?;
        let rls = match &config.ratelimit_url {
            Some(u) => Some(Backend::new(u, connections)?),
            None => None,
        };
        let limiter = Arc::new(ratelimit::RateLimiter::new(rls, &config));
        Ok(Self {
            config: Arc::new(config),
            tasks,
            limiter,
            serving: redline_runtime::admin::Readiness::new(true),
        })
    }

    /// A TaskService client on the next connection.
    pub fn tasks(&self) -> TaskServiceClient<Channel> {
        TaskServiceClient::new(self.tasks.channel())
    }

    /// TaskService's health client on the next connection.
    pub fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.tasks.channel())
    }
}

tokio::task_local! {
    /// W3C `traceparent` of the request being served, forwarded on TaskService calls.
    pub static TRACEPARENT: String;
}

/// Wraps every request in a server span parented on the caller's `traceparent` (a new trace otherwise), logs
/// one line with its trace id, echoes the id in `X-Trace-Id` and counts the request by route and status.
async fn access_log(request: Request, next: Next) -> Response {
    use redline_runtime::telemetry;
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    // Metrics are labelled by route template, never by path: task ids would make a series per task.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let span = tracing::info_span!(
        "http",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        trace_id = tracing::field::Empty,
    );
    let incoming = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    telemetry::adopt(&span, telemetry::extract(request.headers()));
    // The span's own context goes to TaskService, which stores it with the task. Without the OpenTelemetry
    // layer (an embedding application's own subscriber) the caller's trace id is kept under a new span id.
    let traceparent = telemetry::traceparent(&span).unwrap_or_else(|| {
        let trace_id = incoming
            .as_deref()
            .and_then(|v| v.split('-').nth(1))
            .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .map_or_else(|| format!("{:032x}", rand::random::<u128>()), str::to_owned);
        format!("00-{trace_id}-{:016x}-01", rand::random::<u64>())
    });
    let trace_id = traceparent.split('-').nth(1).unwrap_or_default().to_owned();
    let mut response = TRACEPARENT
        .scope(traceparent, next.run(request).instrument(span.clone()))
        .await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    span.in_scope(|| {
        tracing::info!(
            trace_id = %trace_id,
            %method,
            path = %path,
            status,
            latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            "request"
        );
    });
    metrics::counter!(
        "redline_gateway_requests_total",
        "method" => method.to_string(),
        "route" => route.clone(),
        "status" => status.to_string()
    )
    .increment(1);
    metrics::histogram!(
        "redline_gateway_request_seconds",
        "method" => method.to_string(),
        "route" => route
    )
    .record(elapsed.as_secs_f64());
    if let Ok(v) = HeaderValue::from_str(&trace_id) {
        response.headers_mut().insert("x-trace-id", v);
    }
    response
}

async fn openapi_json() -> axum::Json<serde_json::Value> {
    axum::Json(openapi::document())
}

/// The HTTP application. Tests drive it with `app(state).oneshot(request)`.
pub fn app(state: AppState) -> Router {
    let mut tasks = Router::new();
    for r in routes::ROUTES {
        if let Some(h) = routes::handler(r) {
            tasks = tasks.route(r.path, h);
        }
    }
    // Layers added later run first: authentication, then rate limiting, then the handler.
    let tasks = tasks
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            ratelimit::middleware,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::middleware,
        ));
    Router::new()
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/openapi.json", get(openapi_json))
        .merge(tasks)
        .fallback(routes::not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(access_log))
        .with_state(state)
}

async fn method_not_allowed(State(_): State<AppState>) -> Response {
    use axum::response::IntoResponse;
    error::ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        tonic::Code::Unimplemented,
        "Method not allowed",
    )
    .into_response()
}

/// Why the gateway could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A backend URL was rejected.
    #[error("client: {0}")]
    Client(#[from] tonic::transport::Error),
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Serve(#[from] std::io::Error),
    /// The admin port could not be opened.
    #[error(transparent)]
    Admin(#[from] redline_runtime::admin::AdminError),
}

/// Serves the gateway on `listener` until `shutdown` is cancelled, then drains in-flight requests.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    use axum::serve::ListenerExt;
    let grace = config.server.shutdown_grace;
    tracing::info!(
        listen = ?listener.local_addr().ok(),
        tasks = %config.tasks_url,
        ratelimit = ?config.ratelimit_url,
        api_keys = config.api_keys.len(),
        "gateway starting"
    );
    let admin = config.server.metrics_listen;
    let delay = config.server.shutdown_delay;
    let state = AppState::new(config)?;
    if let Some(addr) = admin {
        // Its /readyz follows the same flag as the main port's drain.
        redline_runtime::admin::spawn(addr, state.serving.clone(), None, CancellationToken::new())
            .await?;
    }
    // Small JSON responses: without TCP_NODELAY, Nagle's algorithm delays them behind delayed ACKs.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let serving = state.serving.clone();
    let stop_accepting = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            // Not ready at once, still serving for the delay: endpoints are removed after SIGTERM, not before.
            serving.set(false);
            tokio::time::sleep(delay).await;
        }
    };
    let server = axum::serve(
        listener,
        app(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop_accepting);
    let result =
        redline_runtime::grpc::with_drain_deadline(server.into_future(), &shutdown, delay, grace)
            .await
            .unwrap_or(Ok(()));
    tracing::info!("gateway stopped");
    result.map_err(RunError::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request as HttpRequest, StatusCode};
    use http_body_util::BodyExt;
    use std::collections::HashMap;
    use tower::ServiceExt;

    /// Calls take the backend's connections in turn: with three, three calls open three TCP connections
    /// (what lets a ClusterIP Service spread them over pods), and further calls reuse them.
    #[tokio::test]
    async fn backend_calls_take_the_connections_in_turn() {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let incoming = futures::stream::unfold(
            (listener, accepted.clone()),
            |(listener, accepted)| async move {
                let conn = listener.accept().await.map(|(stream, _)| stream);
                accepted.fetch_add(1, Ordering::SeqCst);
                Some((conn, (listener, accepted)))
            },
        );
        let (_health, service) = tonic_health::server::health_reporter();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        let backend = Backend::new(&format!("http://{addr}"), 3).unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..9 {
            let reply = HealthClient::new(backend.channel())
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await;
            assert!(reply.is_ok(), "{reply:?}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    /// An app whose backends are never reached: routing and body checks happen before any call.
    fn offline_app() -> Router {
        let config = Config::from_args(
            Args {
                tasks_url: "http://127.0.0.1:9".into(),
                ratelimit_url: "none".into(),
                ..Args::default()
            },
            &HashMap::<String, String>::new(),
        );
        let Ok(config) = config else { panic!("config") };
        let Ok(state) = AppState::new(config) else {
            panic!("state")
        };
        app(state)
    }

    async fn call(
        method: &str,
        uri: &str,
        ct: Option<&str>,
        body: &'static str,
    ) -> (StatusCode, serde_json::Value) {
        let mut req = HttpRequest::builder().method(method).uri(uri);
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let Ok(req) = req.body(Body::from(body)) else {
            panic!("request")
        };
        let Ok(resp) = offline_app().oneshot(req).await;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .unwrap_or_default();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    #[tokio::test]
    async fn unknown_paths_and_methods_are_json() {
        let (status, body) = call("GET", "/nowhere", None, "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["code"], 5);
        let (status, body) = call("DELETE", "/tasks/submit", None, "").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(body["error"].is_string());
    }

    #[tokio::test]
    async fn bodies_are_checked_before_any_call() {
        let (status, _) = call("POST", "/tasks/submit", Some("text/plain"), "x").await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let (status, body) = call("POST", "/tasks/convert", Some("application/json"), "{}").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "input_file is required");
        let (status, _) = call("GET", "/healthz", None, "").await;
        assert_eq!(status, StatusCode::OK);
    }

    async fn raw_get(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
        redline_testkit::raw_get(addr, path, &[])
            .await
            .map(|(status, _)| status)
    }

    /// SIGTERM with a shutdown delay: not ready at once, still serving for the delay, then closed.
    #[tokio::test]
    async fn shutdown_delay_keeps_serving_while_not_ready() {
        let config = Config::from_args(
            Args {
                tasks_url: "http://127.0.0.1:9".into(),
                ratelimit_url: "none".into(),
                server: redline_runtime::config::ServerArgs {
                    shutdown_delay: "600ms".into(),
                    ..Default::default()
                },
                ..Args::default()
            },
            &HashMap::<String, String>::new(),
        );
        let Ok(config) = config else { panic!("config") };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let server = tokio::spawn(run(config, listener, stop.clone()));
        assert_eq!(raw_get(addr, "/healthz").await.ok(), Some(200));
        stop.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            raw_get(addr, "/readyz").await.ok(),
            Some(503),
            "not ready once draining"
        );
        assert_eq!(
            raw_get(addr, "/healthz").await.ok(),
            Some(200),
            "still serving during the delay"
        );
        let _ = server.await;
        assert!(
            raw_get(addr, "/healthz").await.is_err(),
            "closed after the delay"
        );
    }

    #[tokio::test]
    async fn dead_task_service_is_503() {
        let (status, body) = call("GET", "/tasks/status/x", None, "").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["code"], 14);
    }
}
