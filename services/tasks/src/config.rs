//! TaskService configuration: flags with environment fallbacks, validated all at once.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use redline_runtime::config::{
    GrpcArgs, NamespaceArgs, RedisArgs, RedisConfig, ServerArgs, ServerConfig,
};
use redline_runtime::{ConfigErrors, Env};

/// Command-line flags of `redline-tasks`. Every flag has an environment variable.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "redline-tasks",
    version,
    about = "TaskService: submit, inspect, cancel and list redline tasks."
)]
pub struct Args {
    /// Address to serve gRPC on.
    #[arg(long, env = "REDLINE_TASKS_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: String,
    /// Redis.
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Key namespace.
    #[command(flatten)]
    pub namespace: NamespaceArgs,
    /// Admin port and shutdown drain.
    #[command(flatten)]
    pub server: ServerArgs,
    /// gRPC server options.
    #[command(flatten)]
    pub grpc: GrpcArgs,
    /// Largest accepted task arguments, in bytes.
    #[arg(long, env = "REDLINE_MAX_PAYLOAD_BYTES", default_value = "1048576")]
    pub max_payload_bytes: String,
    /// How long finished task records and results are kept.
    #[arg(long, env = "REDLINE_RESULT_TTL", default_value = "1d")]
    pub result_ttl: String,
    /// How long an idempotency key maps to its task.
    #[arg(long, env = "REDLINE_IDEMPOTENCY_TTL", default_value = "1d")]
    pub idempotency_ttl: String,
    /// Most finished tasks kept (the oldest are deleted first, whatever their TTL): bounds Redis memory.
    #[arg(long, env = "REDLINE_MAX_FINISHED", default_value = "100000")]
    pub max_finished: String,
    /// Most queues in the namespace (a submit naming a new queue past this is refused).
    #[arg(long, env = "REDLINE_MAX_QUEUES", default_value = "1000")]
    pub max_queues: String,
}

impl Default for Args {
    fn default() -> Self {
        Self::parse_from(["redline-tasks"])
    }
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// gRPC address.
    pub listen: SocketAddr,
    /// Redis.
    pub redis: RedisConfig,
    /// Key namespace.
    pub namespace: String,
    /// Admin port and shutdown drain.
    pub server: ServerConfig,
    /// Serve no gRPC reflection.
    pub disable_reflection: bool,
    /// Largest accepted arguments.
    pub max_payload: usize,
    /// Retention of finished records.
    pub result_ttl: Duration,
    /// Lifetime of idempotency keys.
    pub idempotency_ttl: Duration,
    /// Most finished records kept.
    pub max_finished: u64,
    /// Most queues.
    pub max_queues: u64,
}

impl Config {
    /// Validates flags, falling back to `env`; reports every problem at once.
    pub fn from_args(args: Args, env: &dyn Env) -> Result<Self, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let listen = errors.socket("listen", &args.listen);
        let redis = args.redis.resolve(env, &mut errors);
        let namespace = args.namespace.resolve(&mut errors);
        let server = args.server.resolve(&mut errors);
        let max_payload = match args.max_payload_bytes.parse::<usize>() {
            Ok(n) if (1024..=64 << 20).contains(&n) => n,
            _ => {
                errors.push("--max-payload-bytes: must be a number of bytes from 1024 to 67108864");
                1 << 20
            }
        };
        let result_ttl = errors.duration_of("result-ttl", &args.result_ttl, true);
        let idempotency_ttl = errors.duration_of("idempotency-ttl", &args.idempotency_ttl, true);
        let mut count = |flag: &str, raw: &str, max: u64| match raw.parse::<u64>() {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => {
                errors.push(format!("--{flag}: must be a whole number from 1 to {max}"));
                1
            }
        };
        let max_finished = count("max-finished", &args.max_finished, 100_000_000);
        let max_queues = count("max-queues", &args.max_queues, 100_000);
        errors.finish(Self {
            listen,
            redis,
            namespace,
            server,
            disable_reflection: args.grpc.disable_reflection,
            max_payload,
            result_ttl,
            idempotency_ttl,
            max_finished,
            max_queues,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn defaults() {
        let c = Config::from_args(Args::default(), &HashMap::new()).map_err(|e| e.to_string());
        assert_eq!(c.as_ref().map(|c| c.listen.port()), Ok(50051));
        assert_eq!(c.as_ref().map(|c| c.max_payload), Ok(1 << 20));
        assert_eq!(
            c.as_ref().map(|c| c.server.shutdown_grace),
            Ok(Duration::from_secs(10))
        );
    }

    #[test]
    fn all_errors_together() {
        let args = Args::parse_from([
            "redline-tasks",
            "--listen",
            "nowhere",
            "--max-payload-bytes=-1",
            "--result-ttl",
            "0s",
        ]);
        assert_eq!(
            Config::from_args(args, &HashMap::new())
                .err()
                .map(|e| e.0.len()),
            Some(3)
        );
    }
}
