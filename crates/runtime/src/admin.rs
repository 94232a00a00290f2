//! The admin port: Prometheus `/metrics`, `/healthz` and `/readyz` over plain HTTP, beside a service's own port.
//!
//! Code anywhere in a process records through the `metrics` facade (`metrics::counter!` and friends). A process
//! started with `--metrics-listen` installs the Prometheus recorder and serves it here; one started without
//! never installs it, so recording is a no-op there and histogram samples never pile up unread.
//!
//! The same port answers kubelet's HTTP probes for processes without a gRPC server of their own (the worker):
//! `/healthz` is the process alone, `/readyz` what the owner of the [`Readiness`] flag says.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Flag, env variable and conventional port of the admin listener, the same in every binary.
pub const METRICS_LISTEN_ENV: &str = "REDLINE_METRICS_LISTEN";

/// Histogram buckets in seconds, shared by every histogram: store round trips (sub-millisecond) up to queue
/// waits and task runs of an hour.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 900.0, 3600.0,
];

/// Gauges worth computing only when someone looks (queue depth, oldest task): run before each scrape.
pub type Collector = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Whether the process should receive work, as `/readyz` reports it.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// A flag starting at `ready`.
    pub fn new(ready: bool) -> Self {
        Self(Arc::new(AtomicBool::new(ready)))
    }

    /// Sets the flag.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    /// Reads the flag.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle).
pub fn install_metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .expect("bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics will be empty");
        }
        handle
    })
}

#[derive(Clone)]
struct AdminState {
    handle: &'static PrometheusHandle,
    readiness: Readiness,
    collector: Option<Collector>,
}

/// The admin port could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("admin port {addr}: {source}")]
pub struct AdminError {
    /// Requested address.
    pub addr: SocketAddr,
    /// Why binding failed.
    #[source]
    pub source: std::io::Error,
}

/// Binds the admin listener (a clear error when the address is taken), then serves it in the background until
/// `shutdown` is cancelled.
pub async fn spawn(
    addr: SocketAddr,
    readiness: Readiness,
    collector: Option<Collector>,
    shutdown: CancellationToken,
) -> Result<SocketAddr, AdminError> {
    let error = |source| AdminError { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(error)?;
    let local = listener.local_addr().map_err(error)?;
    let handle = install_metrics();
    let state = AdminState {
        handle,
        readiness,
        collector,
    };
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_page))
        .with_state(state);
    let upkeep = shutdown.clone();
    tokio::spawn(async move {
        // Drains histogram samples into their buckets even when nobody scrapes for a while.
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = upkeep.cancelled() => return,
                _ = tick.tick() => handle.run_upkeep(),
            }
        }
    });
    tracing::info!(addr = %local, "admin port listening (/metrics, /healthz, /readyz)");
    tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned());
        if let Err(e) = serve.await {
            tracing::warn!(error = %e, "admin port stopped");
        }
    });
    Ok(local)
}

async fn metrics_page(State(state): State<AdminState>) -> impl IntoResponse {
    if let Some(collect) = &state.collector {
        // A slow store must not hang the scraper: stale gauges beat no page.
        let _ = tokio::time::timeout(Duration::from_secs(2), collect()).await;
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.handle.render(),
    )
}

async fn ready_page(State(state): State<AdminState>) -> impl IntoResponse {
    if state.readiness.get() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let status = out[9..12].parse().unwrap();
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    #[tokio::test]
    async fn serves_metrics_and_probes() {
        let readiness = Readiness::default();
        let stop = CancellationToken::new();
        let collector: Collector =
            Arc::new(|| Box::pin(async { metrics::gauge!("redline_test_collected").set(7.0) }));
        let addr = spawn(
            "127.0.0.1:0".parse().unwrap(),
            readiness.clone(),
            Some(collector),
            stop.clone(),
        )
        .await
        .unwrap();
        metrics::counter!("redline_test_events_total", "kind" => "a").increment(3);
        metrics::histogram!("redline_test_seconds").record(0.003);

        assert_eq!(get(addr, "/healthz").await.0, 200);
        assert_eq!(get(addr, "/readyz").await.0, 503);
        readiness.set(true);
        assert_eq!(get(addr, "/readyz").await.0, 200);

        let (status, page) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            page.contains("redline_test_events_total{kind=\"a\"} 3"),
            "{page}"
        );
        assert!(page.contains("redline_test_collected 7"), "{page}");
        assert!(
            page.contains("redline_test_seconds_bucket{le=\"0.005\"} 1"),
            "{page}"
        );
        stop.cancel();
    }
}
