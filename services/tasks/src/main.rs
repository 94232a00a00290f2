//! `redline-tasks`: the TaskService gRPC server.

use clap::Parser;
use redline_runtime::{EXIT_USAGE, LogFormat, ProcessEnv};
use redline_tasks::config::{Args, Config};

#[tokio::main]
async fn main() {
    redline_runtime::init_tracing(LogFormat::parse(
        std::env::var("REDLINE_LOG_FORMAT").ok().as_deref(),
    ));
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
    if let Err(e) = redline_tasks::run(config, listener, shutdown).await {
        tracing::error!(error = %e, "TaskService stopped");
        std::process::exit(1);
    }
}
