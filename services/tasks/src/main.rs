//! `redline-tasks`: the TaskService gRPC server. Wiring only: telemetry, configuration, listener, run until a
//! signal.

/// Every binary allocates through mimalloc: see the workspace manifest for why.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use redline_runtime::{ProcessEnv, config};
use redline_tasks::config::{Args, Config};

#[tokio::main]
async fn main() -> ExitCode {
    redline_runtime::main("redline-tasks", Box::pin(run())).await
}

async fn run() -> Result<ExitCode, ExitCode> {
    let args = config::parse_args::<Args>()?;
    let config = config::valid(Config::from_args(args, &ProcessEnv))?;
    tracing::info!(redis = %config.redis.url, from = config.redis.source, "configuration loaded");
    let listener = config::bind(config.listen).await?;
    let shutdown = redline_runtime::shutdown_on_signal();
    let result = redline_tasks::run(config, listener, shutdown).await;
    Ok(config::finish("TaskService", result))
}
