//! Runs the library's commands until the `redline` binary wires them:
//! `convert IN OUT [options]` and `bench [options]` (release builds only for the benchmark).

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "redline-convert",
    about = "Market-data conversion and its benchmark"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert a file to another format.
    Convert(redline_convert::cli::ConvertArgs),
    /// Benchmark conversions against pyarrow and polars.
    Bench(redline_convert::bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Convert(args) => redline_convert::cli::run(args),
        Command::Bench(args) => redline_convert::bench::run(args),
    }
}
