//! `redline-worker`: runs redline background tasks. Wiring only: telemetry, configuration, run until a signal.

/// Every binary allocates through mimalloc: see the workspace manifest for why.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use redline_runtime::{ProcessEnv, config};
use redline_worker::config::{Args, Config};

#[tokio::main]
async fn main() -> ExitCode {
    redline_runtime::main("redline-worker", Box::pin(run())).await
}

async fn run() -> Result<ExitCode, ExitCode> {
    let args = config::parse_args::<Args>()?;
    let config = config::valid(Config::from_args(args, &ProcessEnv))?;
    tracing::info!(redis = %config.redis.url, from = config.redis.source, "configuration loaded");
    let shutdown = redline_runtime::shutdown_on_signal();
    let registry = redline_worker::registry_for(&config);
    let result = redline_worker::run(config, registry, shutdown).await;
    Ok(config::finish(
        "worker",
        result.map(|report| tracing::info!(?report, "worker stopped")),
    ))
}
