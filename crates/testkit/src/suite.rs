//! The suite in one process: a private redis-server, TaskService, workers, and optionally RateLimitService
//! and the REST gateway, each on its own `127.0.0.1` port, each stoppable and restartable on that port.
//!
//! ```ignore
//! let suite = Suite::builder().workers(2).ratelimit(&[]).gateway(&["--default-limits", "5 per minute"]).start().await;
//! let reply = suite.post("/tasks/submit", json!({"task_name": "redline.noop"})).await;
//! ```
//!
//! Services are configured with the flags their binaries take (parsed by their own clap definitions), so a
//! test exercises the same configuration path as a deployment, and an empty environment, so nothing leaks in
//! from the machine. Worker data lives in a temporary directory and downloads go to a closed local port, so
//! no test touches the working tree or the network.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use redline_proto::redline::ratelimit::v1::rate_limit_service_client::RateLimitServiceClient;
use redline_proto::tasks::task_service_client::TaskServiceClient;
use serde_json::Value;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::{PATIENCE, RedisServer, eventually};

/// The address a closed local port answers on: downloads pointed here fail at once, offline.
const NOWHERE: &str = "http://127.0.0.1:9";

/// What to start.
#[derive(Debug, Default)]
pub struct SuiteBuilder {
    redis: Option<RedisServer>,
    tasks: Vec<String>,
    workers: Option<usize>,
    worker: Vec<String>,
    data_dir: Option<PathBuf>,
    ratelimit: Option<Vec<String>>,
    gateway: Option<Vec<String>>,
}

impl SuiteBuilder {
    /// Uses this Redis instead of a fresh one without persistence.
    pub fn redis(mut self, redis: RedisServer) -> Self {
        self.redis = Some(redis);
        self
    }

    /// Extra flags of TaskService (`redline-tasks`).
    pub fn tasks(mut self, flags: &[&str]) -> Self {
        self.tasks.extend(owned(flags));
        self
    }

    /// How many workers to run (default 1).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// Extra flags of every worker (`redline-worker`), after the suite's own (concurrency 4, cancel grace
    /// 500 ms, a private data directory, downloads from a closed port), which they may override.
    pub fn worker(mut self, flags: &[&str]) -> Self {
        self.worker.extend(owned(flags));
        self
    }

    /// The workers' data directory (default: a temporary one owned by the suite).
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_owned());
        self
    }

    /// Runs RateLimitService with these extra flags.
    pub fn ratelimit(mut self, flags: &[&str]) -> Self {
        self.ratelimit = Some(owned(flags));
        self
    }

    /// Runs the gateway with these extra flags; its backends are the suite's services (RateLimitService only
    /// when the suite runs one, else `--ratelimit-url none` unless the flags say otherwise).
    pub fn gateway(mut self, flags: &[&str]) -> Self {
        self.gateway = Some(owned(flags));
        self
    }

    /// Starts everything and waits until TaskService, RateLimitService and the gateway are ready and every
    /// worker has registered.
    ///
    /// # Panics
    /// When a service's flags are rejected or a service does not become ready in time.
    pub async fn start(self) -> Suite {
        let redis = self.redis.unwrap_or_else(RedisServer::start);
        let (data_dir, owned_dir) = match self.data_dir {
            Some(d) => (d, None),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("redline-data-")
                    .tempdir()
                    .expect("a temporary data directory");
                (dir.path().to_owned(), Some(dir))
            }
        };
        let mut suite = Suite {
            tasks: Component::new(local()),
            workers: Vec::new(),
            ratelimit: None,
            gateway: None,
            tasks_flags: self.tasks,
            worker_flags: self.worker,
            ratelimit_flags: self.ratelimit.clone().unwrap_or_default(),
            gateway_flags: self.gateway.clone().unwrap_or_default(),
            data_dir,
            _owned_dir: owned_dir,
            http: Client::builder(hyper_util::rt::TokioExecutor::new()).build_http(),
            redis,
        };
        suite.start_tasks().await;
        for _ in 0..self.workers.unwrap_or(1) {
            suite.add_worker();
        }
        if self.ratelimit.is_some() {
            suite.ratelimit = Some(Component::new(local()));
            suite.start_ratelimit().await;
        }
        if self.gateway.is_some() {
            suite.gateway = Some(Component::new(local()));
            suite.start_gateway().await;
        }
        suite.wait_ready().await;
        let workers = suite.workers.len();
        let tasks = suite.tasks();
        eventually("every worker registered", PATIENCE, || {
            let mut tasks = tasks.clone();
            async move {
                let n = tasks
                    .list_workers(redline_proto::tasks::ListWorkersRequest {})
                    .await
                    .ok()?
                    .into_inner()
                    .workers
                    .len();
                (n >= workers).then_some(())
            }
        })
        .await;
        suite
    }
}

/// `program`, the suite's `defaults` (each dropped when `extra` gives the same flag: clap refuses a flag given
/// twice), then `extra`.
fn command_line(program: &str, defaults: &[(&str, String)], extra: &[String]) -> Vec<String> {
    let mut line = vec![program.to_owned()];
    for (flag, value) in defaults {
        if !extra
            .iter()
            .any(|e| e == flag || e.starts_with(&format!("{flag}=")))
        {
            line.push((*flag).to_owned());
            line.push(value.clone());
        }
    }
    line.extend(extra.iter().cloned());
    line
}

fn owned(flags: &[&str]) -> Vec<String> {
    flags.iter().map(|f| (*f).to_owned()).collect()
}

fn local() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn no_env() -> HashMap<String, String> {
    HashMap::new()
}

/// One service: its address and the token that stops it.
#[derive(Debug)]
struct Component {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Component {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            stop: CancellationToken::new(),
        }
    }

    /// Binds the component's address (a fresh port the first time, the same one after) with a new token.
    async fn bind(&mut self) -> TcpListener {
        self.stop = CancellationToken::new();
        // A restarted service takes its old port; the previous listener may need a moment to close.
        let listener = eventually("binding a service's port", PATIENCE, || {
            let addr = self.addr;
            async move { TcpListener::bind(addr).await.ok() }
        })
        .await;
        self.addr = listener.local_addr().expect("a bound address");
        listener
    }
}

/// A running suite; every service stops when it is dropped.
#[derive(Debug)]
pub struct Suite {
    /// The private Redis.
    pub redis: RedisServer,
    tasks: Component,
    workers: Vec<CancellationToken>,
    ratelimit: Option<Component>,
    gateway: Option<Component>,
    tasks_flags: Vec<String>,
    worker_flags: Vec<String>,
    ratelimit_flags: Vec<String>,
    gateway_flags: Vec<String>,
    data_dir: PathBuf,
    _owned_dir: Option<TempDir>,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl Suite {
    /// What to start: TaskService and one worker unless told more.
    pub fn builder() -> SuiteBuilder {
        SuiteBuilder::default()
    }

    /// TaskService and one worker.
    pub async fn start() -> Self {
        Self::builder().start().await
    }

    // === TaskService ===

    /// TaskService's address.
    pub fn tasks_addr(&self) -> SocketAddr {
        self.tasks.addr
    }

    /// A TaskService client (connecting lazily).
    pub fn tasks(&self) -> TaskServiceClient<Channel> {
        TaskServiceClient::new(self.channel(self.tasks.addr))
    }

    /// TaskService's health client.
    pub fn tasks_health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel(self.tasks.addr))
    }

    fn channel(&self, addr: SocketAddr) -> Channel {
        Channel::from_shared(format!("http://{addr}"))
            .expect("a valid URL")
            .connect_lazy()
    }

    /// Starts TaskService (again, on its old port after [`Self::stop_tasks`]).
    pub async fn start_tasks(&mut self) {
        let flags = command_line(
            "redline-tasks",
            &[("--redis-url", self.redis.url())],
            &self.tasks_flags,
        );
        let args = redline_tasks::config::Args::try_parse_from(flags).expect("TaskService flags");
        let config = redline_tasks::Config::from_args(args, &no_env()).expect("TaskService config");
        let listener = self.tasks.bind().await;
        tokio::spawn(redline_tasks::run(
            config,
            listener,
            self.tasks.stop.clone(),
        ));
    }

    /// Tells TaskService to stop, as SIGTERM does, and returns at once (its drain goes on).
    pub fn terminate_tasks(&self) {
        self.tasks.stop.cancel();
    }

    /// Stops TaskService (its drain included).
    pub async fn stop_tasks(&mut self) {
        self.tasks.stop.cancel();
        let addr = self.tasks.addr;
        eventually("TaskService closed its port", PATIENCE, || async move {
            tokio::net::TcpStream::connect(addr).await.err().map(|_| ())
        })
        .await;
    }

    /// TaskService's `readiness` health status, `None` when it does not answer.
    pub async fn tasks_readiness(&self) -> Option<ServingStatus> {
        let reply = self
            .tasks_health()
            .check(HealthCheckRequest {
                service: "readiness".to_owned(),
            })
            .await
            .ok()?;
        ServingStatus::try_from(reply.into_inner().status).ok()
    }

    /// Waits until TaskService (and RateLimitService and the gateway, when running) are ready.
    pub async fn wait_ready(&self) {
        eventually("TaskService ready", PATIENCE, || async {
            (self.tasks_readiness().await == Some(ServingStatus::Serving)).then_some(())
        })
        .await;
        if let Some(rl) = &self.ratelimit {
            wait_ratelimit_ready(rl.addr).await;
        }
        let own_backend = !self.gateway_flags.iter().any(|f| f == "--tasks-url");
        if self.gateway.is_some() && own_backend {
            eventually("gateway ready", PATIENCE, || async {
                (self.get("/readyz").await.status == StatusCode::OK).then_some(())
            })
            .await;
        }
    }

    // === Workers ===

    /// The workers' data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Starts one more worker with the suite's worker flags.
    pub fn add_worker(&mut self) {
        let n = self.workers.len();
        let flags = command_line(
            "redline-worker",
            &[
                ("--redis-url", self.redis.url()),
                ("--concurrency", "4".to_owned()),
                ("--cancel-grace", "500ms".to_owned()),
                (
                    "--worker-id",
                    format!("suite-worker-{n}-{}", self.redis.port()),
                ),
                ("--data-dir", self.data_dir.display().to_string()),
                ("--download-base-url", NOWHERE.to_owned()),
            ],
            &self.worker_flags,
        );
        let args = redline_worker::config::Args::try_parse_from(flags).expect("worker flags");
        let mut config = redline_worker::Config::from_args(args, &no_env()).expect("worker config");
        // A stuck attempt must not end the test process.
        config.exit_on_stuck_attempt = false;
        let registry = redline_worker::registry_for(&config);
        let stop = CancellationToken::new();
        tokio::spawn(redline_worker::run(config, registry, stop.clone()));
        self.workers.push(stop);
    }

    /// Stops worker `n` gracefully (SIGTERM's drain).
    pub fn stop_worker(&self, n: usize) {
        self.workers[n].cancel();
    }

    // === RateLimitService ===

    /// RateLimitService's address.
    ///
    /// # Panics
    /// When the suite runs no RateLimitService.
    pub fn ratelimit_addr(&self) -> SocketAddr {
        self.ratelimit.as_ref().expect("a RateLimitService").addr
    }

    /// A RateLimitService client (connecting lazily).
    pub fn ratelimit_client(&self) -> RateLimitServiceClient<Channel> {
        RateLimitServiceClient::new(self.channel(self.ratelimit_addr()))
    }

    /// Starts RateLimitService (again, on its old port after [`Self::stop_ratelimit`]).
    pub async fn start_ratelimit(&mut self) {
        let flags = command_line(
            "redline-ratelimit",
            &[("--redis-url", self.redis.url())],
            &self.ratelimit_flags,
        );
        let args = redline_ratelimit::Args::try_parse_from(flags).expect("RateLimitService flags");
        let config =
            redline_ratelimit::Config::from_args(args, &no_env()).expect("RateLimitService config");
        let rl = self
            .ratelimit
            .get_or_insert_with(|| Component::new(local()));
        let listener = rl.bind().await;
        tokio::spawn(redline_ratelimit::run(config, listener, rl.stop.clone()));
        wait_ratelimit_ready(rl.addr).await;
    }

    /// Stops RateLimitService.
    pub async fn stop_ratelimit(&mut self) {
        let rl = self.ratelimit.as_ref().expect("a RateLimitService");
        rl.stop.cancel();
        let addr = rl.addr;
        eventually(
            "RateLimitService closed its port",
            PATIENCE,
            || async move { tokio::net::TcpStream::connect(addr).await.err().map(|_| ()) },
        )
        .await;
    }

    // === Gateway ===

    /// The gateway's address.
    ///
    /// # Panics
    /// When the suite runs no gateway.
    pub fn gateway_addr(&self) -> SocketAddr {
        self.gateway.as_ref().expect("a gateway").addr
    }

    /// Starts the gateway (again, on its old port after [`Self::stop_gateway`]).
    pub async fn start_gateway(&mut self) {
        let ratelimit_url = match &self.ratelimit {
            Some(rl) => format!("http://{}", rl.addr),
            None => "none".to_owned(),
        };
        let flags = command_line(
            "redline-gateway",
            &[
                ("--tasks-url", format!("http://{}", self.tasks.addr)),
                ("--ratelimit-url", ratelimit_url),
            ],
            &self.gateway_flags,
        );
        let cli = redline_gateway::config::Cli::try_parse_from(flags).expect("gateway flags");
        let config =
            redline_gateway::Config::from_args(cli.args, &no_env()).expect("gateway config");
        let gw = self.gateway.get_or_insert_with(|| Component::new(local()));
        let listener = gw.bind().await;
        tokio::spawn(redline_gateway::run(config, listener, gw.stop.clone()));
        // A new client: connections to the old gateway are gone.
        self.http = Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    }

    /// Stops the gateway.
    pub async fn stop_gateway(&mut self) {
        let gw = self.gateway.as_ref().expect("a gateway");
        gw.stop.cancel();
        let addr = gw.addr;
        eventually("the gateway closed its port", PATIENCE, || async move {
            tokio::net::TcpStream::connect(addr).await.err().map(|_| ())
        })
        .await;
    }

    /// Stops the gateway and starts a new one on the same port.
    pub async fn restart_gateway(&mut self) {
        self.stop_gateway().await;
        self.start_gateway().await;
    }

    /// Sends a request to the gateway.
    ///
    /// # Panics
    /// When the gateway does not answer at all.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.gateway_addr()));
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body))).expect("a request");
        let resp = self.http.request(req).await.expect("the gateway answers");
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.expect("a body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    /// `GET path` on the gateway.
    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None, Vec::new(), &[]).await
    }

    /// `POST path` on the gateway with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> Reply {
        let body = body.to_string().into_bytes();
        self.send(Method::POST, path, Some("application/json"), body, &[])
            .await
    }

    /// Polls a task's status through the gateway until it is one of `want`, and returns its record.
    pub async fn wait_status(&self, task_id: &str, want: &[&str]) -> Value {
        let path = format!("/tasks/status/{task_id}");
        let what = format!("task {task_id} reaching {want:?}");
        eventually(&what, PATIENCE, || async {
            let r = self.get(&path).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            want.iter()
                .any(|w| r.body["status"] == *w)
                .then_some(r.body)
        })
        .await
    }

    /// Waits until `/tasks/health` reports healthy.
    pub async fn wait_healthy(&self) {
        eventually("the gateway's /tasks/health healthy", PATIENCE, || async {
            (self.get("/tasks/health").await.status == StatusCode::OK).then_some(())
        })
        .await;
    }
}

impl Drop for Suite {
    fn drop(&mut self) {
        if let Some(gw) = &self.gateway {
            gw.stop.cancel();
        }
        if let Some(rl) = &self.ratelimit {
            rl.stop.cancel();
        }
        for w in &self.workers {
            w.cancel();
        }
        self.tasks.stop.cancel();
    }
}

/// Ready once decisions come from Redis: a dry-run check whose limit fails with `error` succeeds (the service
/// answers before its first Redis probe, with failure-mode decisions).
async fn wait_ratelimit_ready(addr: SocketAddr) {
    use redline_proto::redline::ratelimit::v1 as rl;
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("a valid URL")
        .connect_lazy();
    eventually("RateLimitService deciding from Redis", PATIENCE, || {
        let mut client = RateLimitServiceClient::new(channel.clone());
        async move {
            let probe = rl::CheckRequest {
                key: "suite-probe".to_owned(),
                limits: vec![rl::LimitSpec {
                    limit: 1000,
                    window: Some(prost_types::Duration {
                        seconds: 1,
                        nanos: 0,
                    }),
                    algorithm: rl::Algorithm::FixedWindow as i32,
                    failure_mode: rl::FailureMode::Error as i32,
                    ..Default::default()
                }],
                dry_run: true,
                ..Default::default()
            };
            client.check(probe).await.ok().map(|_| ())
        }
    })
    .await;
}

/// A gateway response: status, headers and JSON body (`Value::Null` when the body is not JSON).
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body as JSON.
    pub body: Value,
}

impl Reply {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}
