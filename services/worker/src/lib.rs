//! Worker processes that run registered redline tasks.
//!
//! A worker consumes its queues with at-least-once delivery: each claimed task is held under the worker's
//! lease (renewed by a heartbeat), every attempt carries a fencing token, failures retry with exponential
//! backoff and jitter, each attempt has a time limit, running tasks can be cancelled, and SIGTERM drains
//! (running tasks finish within a grace period; the rest go back to their queue without using an attempt).
//!
//! Layout:
//! - [`registry`]: the [`TaskHandler`](registry::TaskHandler) trait and the [`Registry`](registry::Registry);
//! - [`builtin`]: diagnostic task types (`redline.noop`, `echo`, `sleep`, `fail`);
//! - [`data`]: REDLINE's data tasks over `redline-convert`;
//! - [`worker`]: the runtime (fetch loop, attempts, completion batcher, heartbeat, drain);
//! - [`config`]: flags and environment.

pub mod builtin;
pub mod config;
pub mod data;
pub mod registry;
pub mod worker;

use redline_taskqueue::connect::{self, RedisOptions};
use redline_taskqueue::{QueueConfig, TaskStore};
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use registry::{Registry, TaskContext, TaskError, TaskHandler};
pub use worker::{WorkerReport, WorkerSettings};

/// Every task type this build of the worker runs, with data paths under `./data`.
pub fn default_registry() -> Registry {
    registry(redline_convert::tasks::DataContext::new(
        redline_convert::DataRoot::new("data"),
    ))
}

/// Every task type this build of the worker runs, data tasks resolving paths in `data`.
pub fn registry(data: redline_convert::tasks::DataContext) -> Registry {
    let mut registry = Registry::new();
    builtin::register(&mut registry);
    data::register(&mut registry, data);
    registry
}

/// The registry a worker with `config` runs.
pub fn registry_for(config: &Config) -> Registry {
    let mut data =
        redline_convert::tasks::DataContext::new(redline_convert::DataRoot::new(&config.data_dir));
    if let Some(url) = &config.download_base_url {
        data.download
            .sources
            .insert("stooq".to_owned(), url.clone());
    }
    registry(data)
}

/// Why the worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The Redis URL is unusable.
    #[error("redis: {0}")]
    Redis(#[from] redline_taskqueue::StoreError),
    /// Redis may evict keys.
    #[error(transparent)]
    Eviction(#[from] redline_runtime::redis::EvictionPolicyError),
    /// The admin port could not be opened.
    #[error(transparent)]
    Admin(#[from] redline_runtime::admin::AdminError),
}

/// Connects to Redis and runs a worker with `registry` until `shutdown`, then drains.
pub async fn run(
    config: Config,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<WorkerReport, RunError> {
    let options = RedisOptions::default();
    let client = connect::client(config.redis.url.expose(), &options)?;
    let subscriber = connect::subscriber(config.redis.url.expose(), &options)?;
    if !config.redis.allow_evicting {
        wait_for_redis(&client, &shutdown).await;
        redline_runtime::redis::check_eviction_policy(&client).await?;
    }
    let store = TaskStore::new(
        client,
        QueueConfig {
            namespace: config.namespace.clone(),
            lease: config.lease,
            ..QueueConfig::default()
        },
    );
    let mut settings = WorkerSettings::new(
        config.worker_id.clone(),
        config.queues.clone(),
        config.concurrency,
    );
    settings.shutdown_grace = config.shutdown_grace;
    settings.cancel_grace = config.cancel_grace;
    settings.exit_on_stuck_attempt = config.exit_on_stuck_attempt;
    settings.max_result_bytes = config.max_result_bytes;
    if let Some(addr) = config.metrics_listen {
        // The admin port outlives the drain (probes and a last scrape), and stops with the process.
        redline_runtime::admin::spawn(
            addr,
            settings.readiness.clone(),
            None,
            CancellationToken::new(),
        )
        .await?;
    }
    tracing::info!(
        worker_id = %settings.worker_id,
        queues = ?settings.queues,
        concurrency = settings.concurrency,
        "worker started"
    );
    Ok(worker::run(store, subscriber, registry, settings, shutdown).await)
}

/// Waits until Redis answers (the worker may start before Redis does), or shutdown.
async fn wait_for_redis(client: &fred::prelude::Client, shutdown: &CancellationToken) {
    use fred::prelude::*;
    let mut warned = false;
    loop {
        if client.ping::<String>(None).await.is_ok() || shutdown.is_cancelled() {
            return;
        }
        if !warned {
            tracing::warn!("waiting for redis");
            warned = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
