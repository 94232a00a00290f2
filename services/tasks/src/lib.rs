//! TaskService: the gRPC front of the redline task queue.
//!
//! [`run`] serves `redline.tasks.v1.TaskService` with grpc.health.v1 and reflection on a listener until a
//! shutdown token fires, then drains in-flight calls within a deadline. Layout:
//! - [`config`]: flags and environment;
//! - [`grpc`]: the handlers (validation, proto ↔ domain);
//! - [`error`]: the one mapping from service errors to gRPC status codes;
//! - [`submitter`]: group commit of concurrent submissions;
//! - [`watch`]: change notifications for WatchTask;
//! - [`queue_metrics`]: queue gauges for the admin port's `/metrics`.

pub mod config;
pub mod error;
pub mod grpc;
pub mod queue_metrics;
pub mod submitter;
pub mod watch;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use redline_catalog::{Catalog, TaskSpec};
use redline_proto::tasks::task_service_server::TaskServiceServer;
use redline_taskqueue::connect::{self, RedisOptions};
use redline_taskqueue::{QueueConfig, TaskStore};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

pub use config::Config;

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Redis configuration unusable.
    #[error("redis: {0}")]
    Redis(#[from] redline_taskqueue::StoreError),
    /// Redis may evict keys.
    #[error(transparent)]
    Eviction(#[from] redline_runtime::redis::EvictionPolicyError),
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be built.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The admin port could not be opened.
    #[error(transparent)]
    Admin(#[from] redline_runtime::admin::AdminError),
}

/// Health service names: `liveness` never depends on Redis (a Redis outage must not restart every pod);
/// `readiness`, the service's own name and `""` follow Redis and turn NOT_SERVING on shutdown.
const READINESS: [&str; 3] = ["readiness", "redline.tasks.v1.TaskService", ""];

/// Serves TaskService on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let options = RedisOptions::default();
    let client = connect::client(config.redis.url.expose(), &options)?;
    let subscriber = connect::subscriber(config.redis.url.expose(), &options)?;
    if !config.redis.allow_evicting {
        // Only refuse on a definite answer; an unreachable Redis is checked again when it comes back.
        match redline_runtime::redis::check_eviction_policy(&client).await {
            Err(e @ redline_runtime::redis::EvictionPolicyError::Evicting(_)) => {
                return Err(e.into());
            }
            Err(redline_runtime::redis::EvictionPolicyError::Unreachable(e)) => {
                tracing::warn!(error = %e, "redis unreachable at start-up; serving NOT_SERVING until it answers")
            }
            Ok(()) => {}
        }
    }
    let store = TaskStore::new(
        client,
        QueueConfig {
            namespace: config.namespace.clone(),
            result_ttl: config.result_ttl,
            idempotency_ttl: config.idempotency_ttl,
            max_finished: config.max_finished,
            max_queues: config.max_queues,
            ..QueueConfig::default()
        },
    );
    let hub = watch::WatchHub::new(subscriber, store.keys().event_channel_prefix());
    // The types this build declares; types workers publish are added as they appear.
    let catalog = Arc::new(RwLock::new(redline_catalog::builtin()));
    // Before the first call is answered, so no task finishes under a worker's default retention; the
    // refresh loop below retries if Redis is not up yet.
    if let Err(error) = store.publish_settings().await {
        tracing::warn!(%error, "could not publish retention settings yet");
    }
    let background = shutdown.child_token();
    tokio::spawn(refresh_catalog(
        store.clone(),
        Arc::clone(&catalog),
        background.clone(),
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("liveness", ServingStatus::Serving)
        .await;
    for name in READINESS {
        health
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
    let readiness = redline_runtime::admin::Readiness::default();
    if let Some(addr) = config.server.metrics_listen {
        redline_runtime::admin::spawn(
            addr,
            readiness.clone(),
            Some(queue_metrics::collector(store.clone())),
            background.clone(),
        )
        .await?;
    }
    tokio::spawn(track_readiness(
        store.clone(),
        health.clone(),
        readiness,
        background.clone(),
    ));

    let reflection = redline_runtime::grpc::reflection(
        config.disable_reflection,
        &[redline_proto::FILE_DESCRIPTOR_SET],
        &["redline.tasks.v1.TaskService"],
    )?;

    let limits = grpc::Limits {
        max_payload: config.max_payload,
        ..Default::default()
    };
    let service = grpc::TaskServiceImpl::new(store, hub, catalog, limits, shutdown.clone());
    let server = TaskServiceServer::new(service)
        // A batch of 1000 tasks of up to max_payload each must fit, within reason.
        .max_decoding_message_size((config.max_payload * 4).max(16 << 20));

    tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "TaskService listening");
    let drain = redline_runtime::grpc::drain(
        health.clone(),
        &READINESS,
        shutdown.clone(),
        config.server.shutdown_delay,
    );
    let serve = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        // A span per call, parented on the caller's `traceparent`.
        .trace_fn(redline_runtime::telemetry::grpc_server_span)
        .add_service(health_service)
        .add_optional_service(reflection)
        .add_service(server)
        // TCP_NODELAY: without it, Nagle's algorithm holds small responses (stream messages, replies that
        // follow a multi-segment request) for the peer's delayed ACK, adding ~40 ms.
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), drain);
    let result = redline_runtime::grpc::with_drain_deadline(
        serve,
        &shutdown,
        config.server.shutdown_delay,
        config.server.shutdown_grace,
    )
    .await;
    background.cancel();
    result.unwrap_or(Ok(()))?;
    Ok(())
}

/// Readiness follows Redis: checked every second, flipped after two failures in a row (one slow ping is not
/// an outage), restored on the first success.
async fn track_readiness(
    store: TaskStore,
    health: tonic_health::server::HealthReporter,
    readiness: redline_runtime::admin::Readiness,
    stop: CancellationToken,
) {
    let mut failures = 0u32;
    let mut serving = None;
    loop {
        let ok = store.ping().await.is_ok();
        failures = if ok { 0 } else { failures + 1 };
        let now = if ok {
            Some(true)
        } else if failures >= 2 || serving.is_none() {
            Some(false)
        } else {
            serving
        };
        if now != serving && !stop.is_cancelled() {
            let status = if now == Some(true) {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            tracing::info!(?status, "readiness changed");
            readiness.set(now == Some(true));
            for name in READINESS {
                health.set_service_status(name, status).await;
            }
            serving = now;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Adds task types published by workers (custom builds may register more than this service knows), and
/// keeps this service's retention settings in Redis, where the worker-side scripts read them (a Redis that
/// restarted empty gets them back within one round).
async fn refresh_catalog(store: TaskStore, catalog: Arc<RwLock<Catalog>>, stop: CancellationToken) {
    loop {
        if let Err(error) = store.publish_settings().await {
            tracing::debug!(%error, "could not publish retention settings; retrying");
        }
        if let Ok(published) = store.published_task_types().await {
            let specs: Vec<TaskSpec> = published
                .values()
                .filter_map(|j| serde_json::from_str(j).ok())
                .collect();
            catalog
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend(specs);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
