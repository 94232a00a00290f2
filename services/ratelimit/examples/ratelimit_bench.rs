//! Runs the rate-limit benchmark: `cargo run --release -p redline-ratelimit --example ratelimit_bench -- --help`.

use clap::Parser;

#[derive(Parser)]
#[command(
    about = "Decisions per second and latency of the rate-limit service, against redis-benchmark"
)]
struct Cli {
    #[command(flatten)]
    args: redline_ratelimit::bench::BenchArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = redline_runtime::telemetry::init("redline-ratelimit-bench");
    let result = redline_ratelimit::bench::run(Cli::parse().args).await;
    telemetry.shutdown();
    result
}
