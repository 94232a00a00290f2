//! The `redline` command: `redline up` runs the whole suite locally; the other commands talk to it. Wiring
//! only: the commands are in the library.

/// Every binary allocates through mimalloc: see the workspace manifest for why.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use redline::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match redline_runtime::config::parse_args::<Cli>() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let telemetry = cli
        .command
        .logs()
        .then(|| redline_runtime::telemetry::init(cli.command.service_name()));
    let code = redline::run(cli).await;
    if let Some(t) = telemetry {
        t.shutdown();
    }
    code
}
