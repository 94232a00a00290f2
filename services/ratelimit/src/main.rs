//! `redline-ratelimit`: wiring only (tracing → config → bind → run until a signal).

/// Every binary allocates through mimalloc: see the workspace manifest for why.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use redline_ratelimit::Config;
use redline_runtime::{EXIT_USAGE, shutdown_on_signal};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let telemetry = redline_runtime::telemetry::init("redline-ratelimit");
    let config = match Config::try_parse() {
        Ok(config) => config,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            return exit_usage();
        }
        Err(e) => {
            // --help and --version.
            let _ = e.print();
            return std::process::ExitCode::SUCCESS;
        }
    };
    if let Err(problems) = config.validate() {
        for p in problems {
            eprintln!("error: {p}");
        }
        return exit_usage();
    }
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", config.listen);
            return exit_usage();
        }
    };
    let result = redline_ratelimit::run(config, listener, shutdown_on_signal()).await;
    telemetry.shutdown();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "rate-limit service failed");
            std::process::ExitCode::FAILURE
        }
    }
}

fn exit_usage() -> std::process::ExitCode {
    std::process::ExitCode::from(u8::try_from(EXIT_USAGE).unwrap_or(64))
}
