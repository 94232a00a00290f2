//! The whole suite in process: private redis-server, TaskService, a worker, RateLimitService and the gateway,
//! each on 127.0.0.1:0, with an HTTP client against the gateway's real port.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use redline_proto::redline::ratelimit::v1 as rl;
use redline_proto::redline::ratelimit::v1::rate_limit_service_client::RateLimitServiceClient;
use redline_taskqueue::testing::RedisServer;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A response: status, headers and JSON body (`Value::Null` when the body is not JSON).
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub struct Suite {
    pub redis: RedisServer,
    pub tasks_addr: SocketAddr,
    pub rls_addr: SocketAddr,
    pub gw_addr: SocketAddr,
    pub gateway_args: redline_gateway::Args,
    stop_backend: CancellationToken,
    stop_rls: CancellationToken,
    stop_gw: CancellationToken,
    client: Client<HttpConnector, Full<Bytes>>,
}

fn no_env() -> HashMap<String, String> {
    HashMap::new()
}

async fn start_rls(redis_url: &str, addr: SocketAddr, stop: CancellationToken) -> SocketAddr {
    let listener = TcpListener::bind(addr).await.expect("bind ratelimit");
    let addr = listener.local_addr().expect("addr");
    let config = <redline_ratelimit::Config as clap::Parser>::parse_from([
        "redline-ratelimit",
        "--redis-url",
        redis_url,
        "--listen",
        "127.0.0.1:0",
    ]);
    tokio::spawn(redline_ratelimit::run(config, listener, stop));
    addr
}

/// Ready once decisions come from Redis: RateLimitService starts before its first Redis probe.
async fn wait_rls_ready(addr: SocketAddr) {
    // Ready once decisions come from Redis: a dry-run check with failure mode `error` succeeds.
    let url = format!("http://{addr}");
    for _ in 0..200 {
        if let Ok(channel) = tonic::transport::Endpoint::from_shared(url.clone())
            .expect("url")
            .connect()
            .await
        {
            let mut rls = RateLimitServiceClient::new(channel);
            let probe = rl::CheckRequest {
                key: "fixture-probe".into(),
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
            if rls.check(probe).await.is_ok() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("RateLimitService did not become ready");
}

async fn start_gateway(
    mut args: redline_gateway::Args,
    tasks: SocketAddr,
    rls: SocketAddr,
    addr: SocketAddr,
    stop: CancellationToken,
) -> SocketAddr {
    args.tasks_url
        .get_or_insert_with(|| format!("http://{tasks}"));
    args.ratelimit_url
        .get_or_insert_with(|| format!("http://{rls}"));
    let config = redline_gateway::Config::from_args(args, &no_env()).expect("gateway config");
    let listener = TcpListener::bind(addr).await.expect("bind gateway");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(redline_gateway::run(config, listener, stop));
    addr
}

impl Suite {
    /// Starts everything; `args` configures the gateway (backend URLs are filled in).
    pub async fn start(args: redline_gateway::Args) -> Self {
        let redis = RedisServer::start();
        let stop_backend = CancellationToken::new();
        let tasks_args = redline_tasks::config::Args {
            redis_url: Some(redis.url()),
            ..Default::default()
        };
        let config = redline_tasks::Config::from_args(tasks_args, &no_env()).expect("tasks config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind tasks");
        let tasks_addr = listener.local_addr().expect("addr");
        tokio::spawn(redline_tasks::run(config, listener, stop_backend.clone()));
        // Data tasks read and write under a private directory, and downloads go to a closed local port:
        // the tests never touch the working tree or the network.
        let data_dir = std::env::temp_dir().join(format!("redline-gw-data-{}", tasks_addr.port()));
        std::fs::create_dir_all(&data_dir).expect("data dir");
        let worker_args = redline_worker::config::Args {
            redis_url: Some(redis.url()),
            concurrency: Some("4".into()),
            cancel_grace: Some("500ms".into()),
            data_dir: Some(data_dir.display().to_string()),
            download_base_url: Some("http://127.0.0.1:9".into()),
            ..Default::default()
        };
        let worker =
            redline_worker::Config::from_args(worker_args, &no_env()).expect("worker config");
        let registry = redline_worker::registry_for(&worker);
        tokio::spawn(redline_worker::run(worker, registry, stop_backend.clone()));
        let stop_rls = CancellationToken::new();
        let rls_addr = start_rls(
            &redis.url(),
            "127.0.0.1:0".parse().expect("addr"),
            stop_rls.clone(),
        )
        .await;
        wait_rls_ready(rls_addr).await;
        let stop_gw = CancellationToken::new();
        let gw_addr = start_gateway(
            args.clone(),
            tasks_addr,
            rls_addr,
            "127.0.0.1:0".parse().expect("addr"),
            stop_gw.clone(),
        )
        .await;
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        Self {
            redis,
            tasks_addr,
            rls_addr,
            gw_addr,
            gateway_args: args,
            stop_backend,
            stop_rls,
            stop_gw,
            client,
        }
    }

    /// Stops the gateway and starts a new one on the same port.
    pub async fn restart_gateway(&mut self) {
        self.stop_gw.cancel();
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.stop_gw = CancellationToken::new();
        self.gw_addr = start_gateway(
            self.gateway_args.clone(),
            self.tasks_addr,
            self.rls_addr,
            self.gw_addr,
            self.stop_gw.clone(),
        )
        .await;
        self.client = Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    }

    /// Stops RateLimitService.
    pub async fn stop_ratelimit(&mut self) {
        self.stop_rls.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    /// Starts RateLimitService again on its old port.
    pub async fn start_ratelimit(&mut self) {
        self.stop_rls = CancellationToken::new();
        self.rls_addr = start_rls(&self.redis.url(), self.rls_addr, self.stop_rls.clone()).await;
        wait_rls_ready(self.rls_addr).await;
    }

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
            .uri(format!("http://{}{path}", self.gw_addr));
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body))).expect("request");
        let resp = self.client.request(req).await.expect("gateway answers");
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None, Vec::new(), &[]).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(
            Method::POST,
            path,
            Some("application/json"),
            body.to_string().into_bytes(),
            &[],
        )
        .await
    }

    /// Polls a task's status until it is one of `want`.
    pub async fn wait_status(&self, task_id: &str, want: &[&str]) -> Value {
        let mut last = Value::Null;
        for _ in 0..200 {
            let r = self.get(&format!("/tasks/status/{task_id}")).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            if want.iter().any(|w| r.body["status"] == *w) {
                return r.body;
            }
            last = r.body;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("task {task_id} never reached {want:?}: {last}");
    }

    /// Waits until /tasks/health reports healthy (the worker has registered).
    pub async fn wait_healthy(&self) {
        for _ in 0..200 {
            if self.get("/tasks/health").await.status == StatusCode::OK {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("suite never became healthy");
    }
}

impl Drop for Suite {
    fn drop(&mut self) {
        self.stop_gw.cancel();
        self.stop_rls.cancel();
        self.stop_backend.cancel();
    }
}

/// Replaces values that change per run (ids, timestamps, worker identities) so a body can be compared with a
/// golden file.
pub fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| {
                    let v = match k.as_str() {
                        "task_id" | "submitted_at" | "started_at" | "completed_at"
                        | "last_heartbeat" | "retry_after" | "registered_tasks"
                            if !v.is_null() =>
                        {
                            Value::String(format!("<{k}>"))
                        }
                        "worker_stats" => Value::String("<worker_stats>".into()),
                        _ => normalize(v),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        other => other.clone(),
    }
}

/// Compares `body` (normalized) with `tests/golden/<name>.json`; `UPDATE_GOLDEN=1` rewrites the file.
pub fn assert_golden(name: &str, body: &Value) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.json"));
    let actual = serde_json::to_string_pretty(&normalize(body)).expect("json") + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert_eq!(actual, expected, "golden {name} differs");
}

/// Checks `value` against a schema of the served OpenAPI document, for the keywords the document uses
/// (`$ref`, `type`, `enum`, `required`, `properties`, `items`, `anyOf`, `maxProperties`, `minimum`,
/// `maximum`), and returns every mismatch with its JSON path. A property the schema does not list is a
/// mismatch too, so the document cannot fall behind the handlers.
pub fn schema_mismatches(doc: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/components/schemas/");
        return schema_mismatches(doc, &doc["components"]["schemas"][name], value, at);
    }
    if let Some(options) = schema.get("anyOf").and_then(Value::as_array) {
        let fits = options
            .iter()
            .any(|o| schema_mismatches(doc, o, value, at).is_empty());
        return if fits {
            Vec::new()
        } else {
            vec![format!("{at}: matches none of anyOf: {value}")]
        };
    }
    let mut out = Vec::new();
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let fits = |t: &str| match t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            _ => false,
        };
        if !types.iter().any(|t| fits(t)) {
            out.push(format!("{at}: {value} is not of type {t}"));
            return out;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        out.push(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let (Some(min), Some(n)) = (
        schema.get("minimum").and_then(Value::as_f64),
        value.as_f64(),
    ) && n < min
    {
        out.push(format!("{at}: {n} < minimum {min}"));
    }
    if let (Some(max), Some(n)) = (
        schema.get("maximum").and_then(Value::as_f64),
        value.as_f64(),
    ) && n > max
    {
        out.push(format!("{at}: {n} > maximum {max}"));
    }
    if let Some(object) = value.as_object() {
        if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
            && object.len() as u64 > max
        {
            out.push(format!("{at}: more than {max} properties"));
        }
        for key in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !object.contains_key(key) {
                out.push(format!("{at}: required property '{key}' is missing"));
            }
        }
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (key, v) in object {
                match props.get(key) {
                    Some(s) => out.extend(schema_mismatches(doc, s, v, &format!("{at}.{key}"))),
                    None => out.push(format!("{at}: property '{key}' is not in the schema")),
                }
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, v) in array.iter().enumerate() {
            out.extend(schema_mismatches(doc, items, v, &format!("{at}[{i}]")));
        }
    }
    out
}
