//! The worker's configuration: flags with environment fallbacks, validated all at once.

use std::time::Duration;

use clap::Parser;
use redline_runtime::{ConfigErrors, Env, resolve_redis_url};

/// Command-line flags of `redline-worker`. Every flag has an environment variable.
#[derive(Debug, Clone, Parser, Default)]
#[command(
    name = "redline-worker",
    version,
    about = "Runs redline background tasks from Redis queues."
)]
pub struct Args {
    /// Redis URL (falls back to REDIS_URL, CELERY_BROKER_URL, CELERY_RESULT_BACKEND).
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Address of the admin port (Prometheus /metrics, /healthz, /readyz), such as 0.0.0.0:9464 [default: none].
    #[arg(long, env = "REDLINE_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Comma-separated queues to consume, in preference order [default: redline_tasks].
    #[arg(long, short = 'Q', env = "REDLINE_WORKER_QUEUES")]
    pub queues: Option<String>,
    /// Tasks run at once (also CELERY_CONCURRENCY) [default: 2].
    #[arg(long, short = 'c', env = "REDLINE_WORKER_CONCURRENCY")]
    pub concurrency: Option<String>,
    /// On SIGTERM, how long running tasks may take to finish before they are requeued [default: 30s].
    #[arg(long, env = "REDLINE_WORKER_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<String>,
    /// How long a cancelled or timed-out task may take to stop before it is aborted [default: 5s].
    #[arg(long, env = "REDLINE_WORKER_CANCEL_GRACE")]
    pub cancel_grace: Option<String>,
    /// A worker silent for this long is presumed dead and its tasks run elsewhere [default: 5s].
    #[arg(long, env = "REDLINE_LEASE")]
    pub lease: Option<String>,
    /// Redis key namespace shared by the suite [default: redline].
    #[arg(long, env = "REDLINE_NAMESPACE")]
    pub namespace: Option<String>,
    /// Worker id [default: <hostname>-<pid>-<random>].
    #[arg(long, env = "REDLINE_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Start even if Redis may evict keys (maxmemory-policy other than noeviction).
    #[arg(long, env = "REDLINE_ALLOW_EVICTING_REDIS")]
    pub allow_evicting_redis: bool,
    /// Directory every data-task path resolves in [default: ./data].
    #[arg(long, env = "REDLINE_DATA_DIR")]
    pub data_dir: Option<String>,
    /// Base URL of the Stooq-style daily CSV endpoint used by process_data_download.
    #[arg(long, env = "REDLINE_DOWNLOAD_BASE_URL")]
    pub download_base_url: Option<String>,
}

/// Validated worker configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Redis URL.
    pub redis_url: String,
    /// Where the URL came from (flag or variable name), for the start-up log.
    pub redis_url_source: &'static str,
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
    /// Skip the eviction-policy check.
    pub allow_evicting_redis: bool,
    /// Data root of the data tasks.
    pub data_dir: String,
    /// Override of the download source's base URL.
    pub download_base_url: Option<String>,
}
impl Config {
    /// Validates flags, falling back to `env`; reports every problem at once.
    pub fn from_args(args: Args, env: &dyn Env) -> Result<Self, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let (redis_url, redis_url_source) = resolve_redis_url(args.redis_url.as_deref(), env);

        let queues: Vec<String> = args
            .queues
            .as_deref()
            .unwrap_or(redline_taskqueue::DEFAULT_QUEUE)
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
            None => 2,
            Some(Ok(n)) if (1..=10_000).contains(&n) => n,
            Some(_) => {
                errors.push(format!(
                    "--concurrency / REDLINE_WORKER_CONCURRENCY / CELERY_CONCURRENCY: '{}' is not a number from 1 to 10000",
                    concurrency_raw.unwrap_or_default()
                ));
                2
            }
        };

        let mut duration = |name: &str, raw: Option<String>, default: Duration| {
            errors.duration(name, raw.as_deref(), default, false)
        };
        let shutdown_grace = duration(
            "shutdown-grace",
            args.shutdown_grace,
            Duration::from_secs(30),
        );
        let cancel_grace = duration("cancel-grace", args.cancel_grace, Duration::from_secs(5));
        let lease = duration("lease", args.lease, Duration::from_secs(5));
        if lease < Duration::from_millis(300) {
            errors.push("--lease: must be at least 300ms");
        }
        let namespace = args.namespace.unwrap_or_else(|| "redline".to_owned());
        if namespace.is_empty() || namespace.contains(char::is_whitespace) {
            errors.push("--namespace: must be non-empty without spaces");
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
        let metrics_listen = errors.address("metrics-listen", args.metrics_listen.as_deref());
        let data_dir = args.data_dir.unwrap_or_else(|| "data".to_owned());
        if let Some(url) = &args.download_base_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            errors.push(format!(
                "--download-base-url: '{url}' must start with http:// or https://"
            ));
        }
        errors.finish(Self {
            redis_url,
            redis_url_source,
            metrics_listen,
            queues,
            concurrency,
            shutdown_grace,
            cancel_grace,
            lease,
            namespace,
            worker_id,
            allow_evicting_redis: args.allow_evicting_redis,
            data_dir,
            download_base_url: args.download_base_url,
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
        let args = Args {
            queues: Some("good,bad queue".into()),
            concurrency: Some("many".into()),
            shutdown_grace: Some("soon".into()),
            lease: Some("10ms".into()),
            ..Args::default()
        };
        let errors = Config::from_args(args, &HashMap::new())
            .err()
            .map(|e| e.0.len());
        assert_eq!(errors, Some(4));
    }
}
