//! `redline-gateway`: the REST gateway. Wiring only: telemetry, configuration, listener, run until a signal.

/// Every binary allocates through mimalloc: see the workspace manifest for why.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use redline_gateway::config::{Cli, Config};
use redline_runtime::{ProcessEnv, config};

#[tokio::main]
async fn main() -> ExitCode {
    redline_runtime::main("redline-gateway", Box::pin(run())).await
}

async fn run() -> Result<ExitCode, ExitCode> {
    let cli = config::parse_args::<Cli>()?;
    let config = config::valid(Config::from_args(cli.args, &ProcessEnv))?;
    let listener = config::bind(config.listen).await?;
    let shutdown = redline_runtime::shutdown_on_signal();
    let result = redline_gateway::run(config, listener, shutdown).await;
    Ok(config::finish("gateway", result))
}
