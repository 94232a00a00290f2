//! Test fixtures: a private redis-server per test and the service in-process on 127.0.0.1:0.

use std::io::{Read, Write};
use std::net::{TcpListener as StdListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use redline_proto::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient as EnvoyClient;
use redline_proto::redline::ratelimit::v1 as pb;
use redline_proto::redline::ratelimit::v1::rate_limit_service_client::RateLimitServiceClient;
use redline_ratelimit::Config;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A private scratch directory, removed on drop.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "redline-rl-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A redis-server owned by one test, killed on drop.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    aof: bool,
    dir: ScratchDir,
}

impl Redis {
    /// Without persistence.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// With AOF (`appendfsync always`), for restart tests.
    pub fn start_with_aof() -> Self {
        Self::start_with(true)
    }

    fn start_with(aof: bool) -> Self {
        let mut redis = Self {
            child: None,
            port: free_port(),
            aof,
            dir: ScratchDir::new("redis"),
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--save")
            .arg("")
            .arg("--dir")
            .arg(&self.dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.aof {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        self.child = Some(cmd.spawn().expect("redis-server on PATH"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing answers, like a stalled Redis.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Starts again on the same port and directory (AOF is replayed when enabled).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of three primaries owned by one test, killed on drop.
pub struct Cluster {
    nodes: Vec<Child>,
    pub ports: Vec<u16>,
    _dir: ScratchDir,
}

impl Cluster {
    pub fn start() -> Self {
        let dir = ScratchDir::new("cluster");
        // Each node also listens on its port + 10000 (the cluster bus), so ports come from a range where both
        // fit and both are free.
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 3 {
            let port = 20_000 + rand::random::<u16>() % 25_000;
            let free = |p: u16| StdListener::bind(("127.0.0.1", p)).is_ok();
            if !ports.contains(&port) && free(port) && free(port + 10_000) {
                ports.push(port);
            }
        }
        let nodes = ports
            .iter()
            .map(|port| {
                Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args([
                        "--cluster-enabled",
                        "yes",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ])
                    .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                    .arg("--dir")
                    .arg(&dir.0)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server on PATH")
            })
            .collect();
        let cluster = Self {
            nodes,
            ports,
            _dir: dir,
        };
        let cli = |args: &[&str]| {
            Command::new("redis-cli")
                .args(args)
                .stdin(Stdio::null())
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while cluster
            .ports
            .iter()
            .any(|p| !cli(&["-p", &p.to_string(), "ping"]).contains("PONG"))
        {
            assert!(Instant::now() < deadline, "cluster nodes did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let addrs: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let mut create = vec!["--cluster", "create"];
        create.extend(addrs.iter().map(String::as_str));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        cli(&create);
        let deadline = Instant::now() + Duration::from_secs(20);
        while cluster
            .ports
            .iter()
            .any(|p| !cli(&["-p", &p.to_string(), "cluster", "info"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "the cluster did not form");
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// A `redis-cluster://` URL naming every node.
    pub fn url(&self) -> String {
        format!(
            "redis-cluster://127.0.0.1:{}?node=127.0.0.1:{}&node=127.0.0.1:{}",
            self.ports[0], self.ports[1], self.ports[2]
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}

/// The service running in this process.
pub struct Service {
    pub endpoint: String,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl Service {
    /// Starts the service against `redis_url`, with extra flags (e.g. `--config`).
    pub async fn start(redis_url: &str, extra: &[&str]) -> Self {
        let prefix = format!("t{}:rl", rand::random::<u32>());
        let mut args = vec![
            "redline-ratelimit",
            "--redis-url",
            redis_url,
            "--key-prefix",
            &prefix,
            "--watch-interval-ms",
            "100",
        ];
        // Functional tests are not about latency: a generous decision timeout keeps them stable on a loaded
        // machine. Tests about timeouts pass their own.
        if !extra.contains(&"--timeout-ms") {
            args.extend_from_slice(&["--timeout-ms", "2000"]);
        }
        args.extend_from_slice(extra);
        let config = Config::try_parse_from(args).expect("config");
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

    pub async fn client(&self) -> RateLimitServiceClient<Channel> {
        connect_retry(&self.endpoint, RateLimitServiceClient::connect).await
    }

    pub async fn envoy(&self) -> EnvoyClient<Channel> {
        connect_retry(&self.endpoint, EnvoyClient::connect).await
    }

    /// Shuts the service down; whether it finished draining within 5 s.
    pub async fn stop(mut self) -> bool {
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
pub fn rule_file(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("rules.yaml");
    std::fs::write(&path, yaml).expect("write rules");
    path
}

/// A descriptor from pairs.
pub fn descriptor(pairs: &[(&str, &str)]) -> pb::Descriptor {
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
pub fn spec(name: &str, limit: u64, window: Duration, algorithm: pb::Algorithm) -> pb::LimitSpec {
    pb::LimitSpec {
        name: name.to_owned(),
        limit,
        window: Some(prost_types::Duration::try_from(window).unwrap()),
        algorithm: algorithm.into(),
        failure_mode: pb::FailureMode::Unspecified.into(),
        ..Default::default()
    }
}
