//! `redline-worker`: runs redline background tasks.

/// Every binary allocates through mimalloc: see the workspace manifest for why.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use redline_runtime::{EXIT_USAGE, ProcessEnv};
use redline_worker::config::{Args, Config};

#[tokio::main]
async fn main() {
    let telemetry = redline_runtime::telemetry::init("redline-worker");
    let config = match Config::from_args(Args::parse(), &ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(EXIT_USAGE);
        }
    };
    tracing::info!(
        redis = %redline_runtime::redact_url(&config.redis_url),
        from = config.redis_url_source,
        "configuration loaded"
    );
    let shutdown = redline_runtime::shutdown_on_signal();
    let registry = redline_worker::registry_for(&config);
    let result = redline_worker::run(config, registry, shutdown).await;
    telemetry.shutdown();
    match result {
        Ok(report) => tracing::info!(?report, "worker stopped"),
        Err(e) => {
            tracing::error!(error = %e, "worker failed to start");
            std::process::exit(1);
        }
    }
}
