//! `redline bench`: benchmarks that print figures and ratios against references measured in the same run.

use clap::Subcommand;

/// What to benchmark.
#[derive(Debug, Clone, Subcommand)]
pub enum Bench {
    /// The task queue: enqueue, drain, latency and memory, against redis-benchmark.
    Tasks,
}

/// Runs a benchmark.
pub async fn run(what: Bench) -> anyhow::Result<()> {
    match what {
        Bench::Tasks => anyhow::bail!("not yet"),
    }
}
