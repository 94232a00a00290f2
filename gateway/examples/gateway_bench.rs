//! `cargo run --release -p redline-gateway --example gateway_bench -- [--runs 3 --seconds 3 ...]`

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: redline_gateway::bench::BenchArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    redline_gateway::bench::run(Cli::parse().args).await
}
