//! The `redline` command: `redline up` runs the whole suite locally; the other commands talk to it.

/// Every binary allocates through mimalloc: see the workspace manifest for why.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use redline::{client, convert, limits, up};

use clap::{Parser, Subcommand};
use redline_runtime::{EXIT_USAGE, ProcessEnv};

#[derive(Debug, Parser)]
#[command(
    name = "redline",
    version,
    about = "Background tasks and rate limits for REDLINE."
)]
struct Cli {
    #[command(flatten)]
    endpoint: client::Endpoint,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
        #[command(subcommand)]
        cmd: limits::LimitsCommand,
    },
    /// Convert a market-data file locally (csv, txt, json, ndjson, parquet, feather, arrow), no queue.
    Convert(convert::ConvertArgs),
    /// Benchmarks that print figures and ratios against a reference measured in the same run.
    Bench {
        #[command(subcommand)]
        what: redline_bench::Bench,
    },
    /// Run one service in the foreground (what `redline up` starts).
    Serve {
        #[command(subcommand)]
        service: Service,
    },
}

#[derive(Debug, Subcommand)]
enum Service {
    /// TaskService (same flags as redline-tasks).
    Tasks(redline_tasks::config::Args),
    /// A worker (same flags as redline-worker).
    Worker(redline_worker::config::Args),
    /// RateLimitService (same flags as redline-ratelimit).
    Ratelimit(redline_ratelimit::Config),
    /// The REST gateway (same flags as redline-gateway).
    Gateway(Box<redline_gateway::config::Args>),
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let quiet = !matches!(cli.command, Command::Serve { .. } | Command::Up(_));
    // `redline convert` drives a progress bar on the terminal; logs would tear it.
    let telemetry = (!quiet).then(|| redline_runtime::telemetry::init(service_name(&cli.command)));
    let result = match cli.command {
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
        Command::Serve { service } => match serve(service).await {
            Err(Failure::Usage(e)) => {
                eprintln!("{e}");
                std::process::exit(EXIT_USAGE);
            }
            Err(Failure::Other(e)) => Err(e),
            Ok(()) => Ok(()),
        },
    };
    if let Some(t) = telemetry {
        t.shutdown();
    }
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The `service.name` of this process's spans: the service it serves, like the dedicated binaries.
fn service_name(command: &Command) -> &'static str {
    match command {
        Command::Serve { service } => match service {
            Service::Tasks(_) => "redline-tasks",
            Service::Worker(_) => "redline-worker",
            Service::Ratelimit(_) => "redline-ratelimit",
            Service::Gateway(_) => "redline-gateway",
        },
        _ => "redline",
    }
}

/// Why `redline serve` stopped: bad configuration (exit 64) or anything else.
enum Failure {
    Usage(redline_runtime::ConfigErrors),
    Other(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Self::Other(e.into())
    }
}

async fn serve(service: Service) -> Result<(), Failure> {
    let shutdown = redline_runtime::shutdown_on_signal();
    match service {
        Service::Tasks(args) => {
            let config =
                redline_tasks::Config::from_args(args, &ProcessEnv).map_err(Failure::Usage)?;
            let listener = tokio::net::TcpListener::bind(config.listen).await?;
            redline_tasks::run(config, listener, shutdown).await?;
        }
        Service::Worker(args) => {
            let config =
                redline_worker::Config::from_args(args, &ProcessEnv).map_err(Failure::Usage)?;
            let registry = redline_worker::registry_for(&config);
            redline_worker::run(config, registry, shutdown).await?;
        }
        Service::Ratelimit(config) => {
            if let Err(problems) = config.validate() {
                return Err(Failure::Usage(redline_runtime::ConfigErrors(problems)));
            }
            let listener = tokio::net::TcpListener::bind(config.listen).await?;
            redline_ratelimit::run(config, listener, shutdown).await?;
        }
        Service::Gateway(args) => {
            let config =
                redline_gateway::Config::from_args(*args, &ProcessEnv).map_err(Failure::Usage)?;
            let listener = tokio::net::TcpListener::bind(config.listen).await?;
            redline_gateway::run(config, listener, shutdown).await?;
        }
    }
    Ok(())
}
