//! The benchmarks behind `redline bench`. Each prints its figures beside a reference measured in the same run
//! on the same machine (`redis-benchmark` on the same Redis, pyarrow and polars on the same file, direct gRPC
//! beside REST), because the machines they run on are shared and only ratios survive the noise.
//!
//! - [`tasks`]: enqueue, drain, latency and Redis memory per task, against `redis-benchmark` LPUSH and,
//!   with `--peers`, BullMQ ([`peers`]);
//! - [`ratelimit`]: decisions per algorithm, unary and streamed, Envoy's RPC, against `redis-benchmark` EVALSHA;
//! - [`convert`]: CSV → Parquet and other conversions against pyarrow and polars;
//! - [`gateway`]: REST `POST /tasks/submit` against direct gRPC, both rate limited;
//! - [`memory`]: Redis memory over a million tasks under `maxmemory`, with default retention;
//! - [`chaos`]: a soak under injected faults, judged by an execution journal (counts, not speed).
//!
//! Services run as their own processes where the figure is about a deployed service: the caller passes the
//! `redline` binary, whose `serve <service>` command runs each one.

pub mod chaos;
pub mod convert;
pub mod gateway;
pub mod memory;
pub mod peers;
pub mod ratelimit;
pub mod tasks;

use std::path::PathBuf;

/// What to benchmark.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Bench {
    /// The task queue: enqueue, drain, latency and memory, against redis-benchmark.
    Tasks(tasks::TaskBenchArgs),
    /// Rate-limit decisions per algorithm and through Envoy's RPC, against redis-benchmark EVALSHA.
    Ratelimit(ratelimit::BenchArgs),
    /// CSV → Parquet (and other conversions) against pyarrow and polars on a generated 5M-row file.
    Convert(convert::BenchArgs),
    /// REST POST /tasks/submit through the gateway against direct gRPC, both rate-limited.
    Gateway(gateway::BenchArgs),
    /// A million no-op tasks through a Redis with maxmemory 256 MB: used_memory over time, answers by code.
    Memory(memory::MemoryArgs),
    /// A mixed workload under random faults (stalls, restarts, OOM, failover, partitions, lost replies,
    /// kills, rolling restarts); prints lost, concurrent and twice-finished tasks and re-runs per fault.
    Chaos(chaos::ChaosArgs),
    /// One worker of the chaos run (started by it).
    #[command(hide = true)]
    ChaosWorker(chaos::ChaosWorkerArgs),
}

/// Runs a benchmark; `redline` is the binary whose `serve <service>` and `convert` commands it drives.
pub async fn run(what: Bench, redline: PathBuf) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; run `cargo run --release -p redline -- bench …` for real figures"
        );
    }
    match what {
        Bench::Tasks(args) => tasks::run(args, redline).await,
        Bench::Ratelimit(mut args) => {
            // The service runs as its own process, as deployed.
            args.server_command = Some(vec![
                redline.display().to_string(),
                "serve".into(),
                "ratelimit".into(),
            ]);
            ratelimit::run(args).await
        }
        Bench::Gateway(args) => gateway::run(args).await,
        Bench::Memory(args) => memory::run(args).await,
        Bench::Chaos(args) => chaos::run(args, redline).await,
        Bench::ChaosWorker(args) => chaos::worker(args).await,
        Bench::Convert(args) => tokio::task::spawn_blocking(move || convert::run(args, &redline))
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("benchmark panicked: {e}"))),
    }
}
