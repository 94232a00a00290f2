//! The worker's configuration: flags with environment fallbacks, validated all at once.

use std::time::Duration;

use clap::Parser;
use redline_runtime::config::{AdminArgs, NamespaceArgs, RedisArgs, RedisConfig};
use redline_runtime::{ConfigErrors, Env};

/// Command-line flags of `redline-worker`. Every flag has an environment variable.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "redline-worker",
    version,
    about = "Runs redline background tasks from Redis queues."
)]
pub struct Args {
    /// Redis.
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Key namespace.
    #[command(flatten)]
    pub namespace: NamespaceArgs,
    /// Admin port.
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Comma-separated queues to consume, in preference order.
    #[arg(long, short = 'Q', env = "REDLINE_WORKER_QUEUES", default_value = redline_taskqueue::DEFAULT_QUEUE)]
    pub queues: String,
    /// Tasks run at once; else CELERY_CONCURRENCY [default: 2].
    #[arg(long, short = 'c', env = "REDLINE_WORKER_CONCURRENCY")]
    pub concurrency: Option<String>,
    /// On SIGTERM, how long running tasks may take to finish before they are requeued.
    #[arg(long, env = "REDLINE_WORKER_SHUTDOWN_GRACE", default_value = "30s")]
    pub shutdown_grace: String,
    /// How long a cancelled or timed-out task may take to stop before it is aborted.
    #[arg(long, env = "REDLINE_WORKER_CANCEL_GRACE", default_value = "5s")]
    pub cancel_grace: String,
    /// A worker silent for this long is presumed dead and its tasks run elsewhere; it stops its own attempts
    /// an eighth of this earlier.
    #[arg(long, env = "REDLINE_LEASE", default_value = "14s")]
    pub lease: String,
    /// Largest task result stored, in bytes of JSON; a task returning more fails.
    #[arg(long, env = "REDLINE_MAX_RESULT_BYTES", default_value = "262144")]
    pub max_result_bytes: String,
    /// Worker id [default: <hostname>-<pid>-<random>].
    #[arg(long, env = "REDLINE_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Directory every data-task path resolves in.
    #[arg(long, env = "REDLINE_DATA_DIR", default_value = "data")]
    pub data_dir: String,
    /// Base URL of the Stooq-style daily CSV endpoint used by process_data_download [default: https://stooq.com].
    #[arg(long, env = "REDLINE_DOWNLOAD_BASE_URL")]
    pub download_base_url: Option<String>,
}

impl Default for Args {
    fn default() -> Self {
        Self::parse_from(["redline-worker"])
    }
}

/// Tasks a worker runs at once unless told otherwise (Celery's default is the number of cores; two keeps a
/// worker's memory predictable).
pub const DEFAULT_CONCURRENCY: usize = 2;

/// Validated worker configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Redis.
    pub redis: RedisConfig,
    /// Admin port (probes and metrics), when enabled.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Queues to consume.
    pub queues: Vec<String>,
    /// Tasks run at once.
    pub concurrency: usize,
    /// Drain deadline on shutdown.
    pub shutdown_grace: Duration,
    /// Stop deadline of a cancelled handler.
    pub cancel_grace: Duration,
    /// Worker lease.
    pub lease: Duration,
    /// Key namespace.
    pub namespace: String,
    /// Worker id.
    pub worker_id: String,
    /// Data root of the data tasks.
    pub data_dir: String,
    /// Override of the download source's base URL.
    pub download_base_url: Option<String>,
    /// Largest stored result.
    pub max_result_bytes: usize,
    /// Exit when an attempt cannot be stopped before its lease could expire (always, in a deployment; a
    /// test running workers inside its own process turns it off).
    pub exit_on_stuck_attempt: bool,
}

impl Config {
    /// Validates flags, falling back to `env`; reports every problem at once.
    pub fn from_args(args: Args, env: &dyn Env) -> Result<Self, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let redis = args.redis.resolve(env, &mut errors);
        let namespace = args.namespace.resolve(&mut errors);
        let metrics_listen = args.admin.resolve(&mut errors);
        let queues: Vec<String> = args
            .queues
            .split(',')
            .map(|q| q.trim().to_owned())
            .filter(|q| !q.is_empty())
            .collect();
        if queues.is_empty() {
            errors.push("--queues: at least one queue is required");
        }
        for q in &queues {
            if let Err(e) = redline_taskqueue::keys::check_queue_name(q) {
                errors.push(format!("--queues: queue name '{q}' {e}"));
            }
        }
        let concurrency_raw = args.concurrency.or_else(|| env.get("CELERY_CONCURRENCY"));
        let concurrency = match concurrency_raw.as_deref().map(str::parse::<usize>) {
            None => DEFAULT_CONCURRENCY,
            Some(Ok(n)) if (1..=10_000).contains(&n) => n,
            Some(_) => {
                errors.push(format!(
                    "--concurrency / REDLINE_WORKER_CONCURRENCY / CELERY_CONCURRENCY: '{}' is not a number from 1 to 10000",
                    concurrency_raw.unwrap_or_default()
                ));
                DEFAULT_CONCURRENCY
            }
        };
        let shutdown_grace = errors.duration_of("shutdown-grace", &args.shutdown_grace, false);
        let cancel_grace = errors.duration_of("cancel-grace", &args.cancel_grace, false);
        let lease = errors.duration_of("lease", &args.lease, false);
        if lease < Duration::from_millis(300) {
            errors.push("--lease: must be at least 300ms");
        }
        let worker_id = args.worker_id.unwrap_or_else(|| {
            let suffix = uuid::Uuid::new_v4().simple().to_string();
            format!(
                "{}-{}-{}",
                crate::worker::hostname(),
                std::process::id(),
                &suffix[..6]
            )
        });
        let max_result_bytes = match args.max_result_bytes.parse::<usize>() {
            Ok(n) if (1024..=64 << 20).contains(&n) => n,
            _ => {
                errors.push("--max-result-bytes: must be a number of bytes from 1024 to 67108864");
                crate::worker::DEFAULT_MAX_RESULT_BYTES
            }
        };
        if let Some(url) = &args.download_base_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            errors.push(format!(
                "--download-base-url: '{url}' must start with http:// or https://"
            ));
        }
        errors.finish(Self {
            redis,
            metrics_listen,
            queues,
            concurrency,
            shutdown_grace,
            cancel_grace,
            lease,
            namespace,
            worker_id,
            data_dir: args.data_dir,
            download_base_url: args.download_base_url,
            max_result_bytes,
            exit_on_stuck_attempt: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn defaults_match_the_original_deployment() {
        let c = Config::from_args(Args::default(), &HashMap::new()).map_err(|e| e.to_string());
        let c = c
            .as_ref()
            .map(|c| (c.queues.clone(), c.concurrency, c.shutdown_grace));
        assert_eq!(
            c,
            Ok((vec!["redline_tasks".to_owned()], 2, Duration::from_secs(30)))
        );
    }

    #[test]
    fn celery_concurrency_is_an_alias() {
        let env: HashMap<String, String> =
            [("CELERY_CONCURRENCY".to_owned(), "7".to_owned())].into();
        assert_eq!(
            Config::from_args(Args::default(), &env)
                .map(|c| c.concurrency)
                .ok(),
            Some(7)
        );
    }

    #[test]
    fn every_problem_is_reported_together() {
        let args = Args::parse_from([
            "redline-worker",
            "--queues",
            "good,bad queue",
            "--concurrency",
            "many",
            "--shutdown-grace",
            "soon",
            "--lease",
            "10ms",
        ]);
        let errors = Config::from_args(args, &HashMap::new())
            .err()
            .map(|e| e.0.len());
        assert_eq!(errors, Some(4));
    }
}
