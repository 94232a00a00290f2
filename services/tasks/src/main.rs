//! `redline-tasks`: the TaskService gRPC server.

/// Every binary allocates through mimalloc: see the workspace manifest for why.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use redline_runtime::{EXIT_USAGE, ProcessEnv};
use redline_tasks::config::{Args, Config};

#[tokio::main]
async fn main() {
    let telemetry = redline_runtime::telemetry::init("redline-tasks");
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
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(addr = %config.listen, error = %e, "cannot listen");
            std::process::exit(1);
        }
    };
    let shutdown = redline_runtime::shutdown_on_signal();
    let result = redline_tasks::run(config, listener, shutdown).await;
    telemetry.shutdown();
    if let Err(e) = result {
        tracing::error!(error = %e, "TaskService stopped");
        std::process::exit(1);
    }
}
