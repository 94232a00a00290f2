//! Test fixtures: the service in-process on 127.0.0.1:0 (each test starts its own redis-server from the test
//! kit), rule files and request builders.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use redline_proto::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient as EnvoyClient;
use redline_proto::redline::ratelimit::v1 as pb;
use redline_proto::redline::ratelimit::v1::rate_limit_service_client::RateLimitServiceClient;
use redline_ratelimit::{Args, Config};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// The service running in this process.
pub(crate) struct Service {
    pub endpoint: String,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl Service {
    /// Starts the service against `redis_url`, with extra flags (e.g. `--config`).
    pub(crate) async fn start(redis_url: &str, extra: &[&str]) -> Self {
        let prefix = format!("t{}:rl", rand::random::<u32>());
        let mut args = vec![
            "redline-ratelimit",
            "--redis-url",
            redis_url,
            "--key-prefix",
            &prefix,
            "--watch-interval",
            "100ms",
        ];
        // Functional tests are not about latency: a generous decision timeout keeps them stable on a loaded
        // machine. Tests about timeouts pass their own.
        if !extra.contains(&"--timeout") {
            args.extend_from_slice(&["--timeout", "2000ms"]);
        }
        args.extend_from_slice(extra);
        let args = Args::try_parse_from(args).expect("flags");
        let no_env = std::collections::HashMap::<String, String>::new();
        let config = Config::from_args(args, &no_env).expect("config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let handle = tokio::spawn(async move {
            redline_ratelimit::run(config, listener, token)
                .await
                .expect("service run");
        });
        let service = Self {
            endpoint,
            shutdown,
            handle: Some(handle),
        };
        // Wait until Redis is connected so the first decision is not a failure-mode one.
        let mut client = service.client().await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let rules = client.list_rules(pb::ListRulesRequest {}).await.unwrap();
            let probe = client
                .check(pb::CheckRequest {
                    key: "fixture-warmup".to_owned(),
                    limit_expression: "1000000 per second".to_owned(),
                    dry_run: true,
                    ..Default::default()
                })
                .await;
            if rules.get_ref().store_available && probe.is_ok_and(|r| !r.get_ref().degraded) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        service
    }

    pub(crate) async fn client(&self) -> RateLimitServiceClient<Channel> {
        connect_retry(&self.endpoint, RateLimitServiceClient::connect).await
    }

    pub(crate) async fn envoy(&self) -> EnvoyClient<Channel> {
        connect_retry(&self.endpoint, EnvoyClient::connect).await
    }

    /// Shuts the service down; whether it finished draining within 5 s.
    pub(crate) async fn stop(mut self) -> bool {
        self.shutdown.cancel();
        match self.handle.take() {
            Some(h) => tokio::time::timeout(Duration::from_secs(5), h)
                .await
                .is_ok(),
            None => true,
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn connect_retry<C, F, Fut>(endpoint: &str, connect: F) -> C
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<C, tonic::transport::Error>>,
{
    for _ in 0..100 {
        if let Ok(c) = connect(endpoint.to_owned()).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("cannot connect to {endpoint}");
}

/// Writes a rule file in a scratch directory.
pub(crate) fn rule_file(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("rules.yaml");
    std::fs::write(&path, yaml).expect("write rules");
    path
}

/// A descriptor from pairs.
pub(crate) fn descriptor(pairs: &[(&str, &str)]) -> pb::Descriptor {
    pb::Descriptor {
        entries: pairs
            .iter()
            .map(|(k, v)| pb::Entry {
                key: (*k).to_owned(),
                value: (*v).to_owned(),
            })
            .collect(),
        ..Default::default()
    }
}

/// A caller-supplied limit.
pub(crate) fn spec(
    name: &str,
    limit: u64,
    window: Duration,
    algorithm: pb::Algorithm,
) -> pb::LimitSpec {
    pb::LimitSpec {
        name: name.to_owned(),
        limit,
        window: Some(prost_types::Duration::try_from(window).unwrap()),
        algorithm: algorithm.into(),
        failure_mode: pb::FailureMode::Unspecified.into(),
        ..Default::default()
    }
}
