//! `redline-gateway`: parse configuration, serve until a signal.

/// Every binary allocates through mimalloc: see the workspace manifest for why.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use redline_gateway::config::Cli;
use redline_runtime::{EXIT_USAGE, ProcessEnv, shutdown_on_signal};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let telemetry = redline_runtime::telemetry::init("redline-gateway");
    let cli = Cli::parse();
    let config = match redline_gateway::Config::from_args(cli.args, &ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("redline-gateway: invalid configuration:\n{e}");
            return std::process::ExitCode::from(u8::try_from(EXIT_USAGE).unwrap_or(64));
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("redline-gateway: cannot listen on {}: {e}", config.listen);
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = redline_gateway::run(config, listener, shutdown_on_signal()).await;
    telemetry.shutdown();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("redline-gateway: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
