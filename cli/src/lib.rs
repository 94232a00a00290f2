//! The `redline` command's library: [`Cli`] and [`run`], each module one family of subcommands; `main.rs`
//! only wires.
//!
//! - [`up`]: `redline up`, the whole suite on one machine, each service in its own process;
//! - [`client`]: `submit`, `status`, `watch`, `cancel`, `retry`, `list`, `inspect`, a TaskService client;
//! - [`limits`]: `limits check|inspect|reset`, a RateLimitService client;
//! - [`convert`]: `convert IN OUT`, the data library's conversion as a local command;
//! - `serve`: one service in the foreground, as its own binary would run it (what `up` starts);
//! - `bench`: the benchmarks of `redline-bench`.

pub mod client;
pub mod convert;
pub mod limits;
pub mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use redline_runtime::{ProcessEnv, config};

/// The `redline` command line.
#[derive(Debug, Parser)]
#[command(
    name = "redline",
    version,
    about = "Background tasks and rate limits for REDLINE."
)]
pub struct Cli {
    /// Where TaskService is.
    #[command(flatten)]
    pub endpoint: client::Endpoint,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A `redline` command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole suite locally (private Redis, TaskService, workers) until Ctrl-C.
    Up(up::UpArgs),
    /// Submit a task.
    Submit(client::SubmitArgs),
    /// Show a task.
    Status {
        /// Task id.
        id: String,
    },
    /// Follow a task's state and progress until it ends.
    Watch {
        /// Task id.
        id: String,
    },
    /// Cancel a task.
    Cancel {
        /// Task id.
        id: String,
    },
    /// Requeue a failed or cancelled task.
    Retry {
        /// Task id.
        id: String,
    },
    /// List tasks, newest first.
    List {
        /// Filter: PENDING, STARTED, PROGRESS, RETRY, SUCCESS, FAILURE, REVOKED (or a state name).
        #[arg(long)]
        status: Option<String>,
        /// Most tasks to show.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Only the dead-letter index (failed for good).
        #[arg(long)]
        dead_letter: bool,
    },
    /// Workers, registered task types and queue statistics.
    Inspect {
        /// What to show.
        #[command(subcommand)]
        what: client::Inspect,
    },
    /// Rate limits: check a key, inspect its counters, reset it (talks to RateLimitService).
    Limits {
        /// RateLimitService URL.
        #[arg(
            long,
            env = "REDLINE_RATELIMIT_URL",
            default_value = "http://127.0.0.1:50052"
        )]
        ratelimit_url: String,
        /// What to do.
        #[command(subcommand)]
        cmd: limits::LimitsCommand,
    },
    /// Convert a market-data file locally (csv, txt, json, ndjson, parquet, feather, arrow), no queue.
    Convert(convert::ConvertArgs),
    /// Benchmarks that print figures and ratios against a reference measured in the same run.
    Bench {
        /// Which benchmark.
        #[command(subcommand)]
        what: redline_bench::Bench,
    },
    /// Run one service in the foreground (what `redline up` starts).
    Serve {
        /// Which service.
        #[command(subcommand)]
        service: Service,
    },
}

/// A service `redline serve` runs.
#[derive(Debug, Subcommand)]
pub enum Service {
    /// TaskService (same flags as redline-tasks).
    Tasks(redline_tasks::config::Args),
    /// A worker (same flags as redline-worker).
    Worker(redline_worker::config::Args),
    /// RateLimitService (same flags as redline-ratelimit).
    Ratelimit(redline_ratelimit::Args),
    /// The REST gateway (same flags as redline-gateway).
    Gateway(Box<redline_gateway::config::Args>),
}

impl Command {
    /// The `service.name` of this process's spans: the service it serves, like the dedicated binaries.
    pub fn service_name(&self) -> &'static str {
        match self {
            Command::Serve { service } => match service {
                Service::Tasks(_) => "redline-tasks",
                Service::Worker(_) => "redline-worker",
                Service::Ratelimit(_) => "redline-ratelimit",
                Service::Gateway(_) => "redline-gateway",
            },
            _ => "redline",
        }
    }

    /// Whether this command logs (services do, and so does the worker a chaos run starts; client commands
    /// print their answers, and `convert` draws a progress bar that log lines would tear).
    pub fn logs(&self) -> bool {
        matches!(
            self,
            Command::Serve { .. }
                | Command::Up(_)
                | Command::Bench {
                    what: redline_bench::Bench::ChaosWorker(_)
                }
        )
    }
}

/// Runs a command; the exit code follows the binaries' (see `redline_runtime::config`).
pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Serve { service } => return serve(service).await.unwrap_or_else(|code| code),
        Command::Up(args) => up::run(args, redline_runtime::shutdown_on_signal()).await,
        Command::Submit(args) => client::submit(&cli.endpoint, args).await,
        Command::Status { id } => client::status(&cli.endpoint, &id).await,
        Command::Watch { id } => client::watch(&cli.endpoint, &id).await,
        Command::Cancel { id } => client::cancel(&cli.endpoint, &id).await,
        Command::Retry { id } => client::retry(&cli.endpoint, &id).await,
        Command::List {
            status,
            limit,
            dead_letter,
        } => client::list(&cli.endpoint, status, limit, dead_letter).await,
        Command::Inspect { what } => client::inspect(&cli.endpoint, what).await,
        Command::Limits { ratelimit_url, cmd } => limits::run(cmd, &ratelimit_url).await,
        // Conversion is synchronous and CPU-bound: keep it off the async workers.
        Command::Convert(args) => tokio::task::spawn_blocking(move || convert::run(args))
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("conversion panicked: {e}"))),
        Command::Bench { what } => match std::env::current_exe() {
            Ok(redline) => redline_bench::run(what, redline).await,
            Err(e) => Err(anyhow::anyhow!("locating the redline binary: {e}")),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One service in the foreground, configured, bound and run as its own binary would be.
async fn serve(service: Service) -> Result<ExitCode, ExitCode> {
    let shutdown = redline_runtime::shutdown_on_signal();
    Ok(match service {
        Service::Tasks(args) => {
            let config = config::valid(redline_tasks::Config::from_args(args, &ProcessEnv))?;
            let listener = config::bind(config.listen).await?;
            config::finish(
                "TaskService",
                redline_tasks::run(config, listener, shutdown).await,
            )
        }
        Service::Worker(args) => {
            let config = config::valid(redline_worker::Config::from_args(args, &ProcessEnv))?;
            let registry = redline_worker::registry_for(&config);
            let result = redline_worker::run(config, registry, shutdown).await;
            config::finish("worker", result.map(drop))
        }
        Service::Ratelimit(args) => {
            let config = config::valid(redline_ratelimit::Config::from_args(args, &ProcessEnv))?;
            let listener = config::bind(config.listen).await?;
            config::finish(
                "RateLimitService",
                redline_ratelimit::run(config, listener, shutdown).await,
            )
        }
        Service::Gateway(args) => {
            let config = config::valid(redline_gateway::Config::from_args(*args, &ProcessEnv))?;
            let listener = config::bind(config.listen).await?;
            config::finish(
                "gateway",
                redline_gateway::run(config, listener, shutdown).await,
            )
        }
    })
}
