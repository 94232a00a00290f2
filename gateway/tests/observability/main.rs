//! Observability end to end: a trace started at the gateway reaches the worker's span, and `/metrics` shows
//! what a scripted workload did. The suite runs in this process with an in-memory span exporter, so every
//! service's spans land in one place.

#[allow(dead_code)] // Shared with the e2e tests; this binary uses part of it.
#[path = "../e2e/fixture.rs"]
mod fixture;

use std::sync::OnceLock;
use std::time::Duration;

use fixture::Suite;
use hyper::{Method, StatusCode};
use opentelemetry::trace::SpanKind;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use redline_runtime::telemetry::{self, Telemetry};
use serde_json::json;

/// The process-wide subscriber, exporting into memory; installed once for every test of this binary.
fn telemetry() -> &'static (Telemetry, InMemorySpanExporter) {
    static TELEMETRY: OnceLock<(Telemetry, InMemorySpanExporter)> = OnceLock::new();
    TELEMETRY.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let t = telemetry::init_with_exporter(
            "redline-test",
            redline_runtime::LogFormat::Text,
            exporter.clone(),
        );
        (t, exporter)
    })
}

fn spans_of_trace(spans: &[SpanData], trace: &str) -> Vec<SpanData> {
    spans
        .iter()
        .filter(|s| s.span_context.trace_id().to_string() == trace)
        .cloned()
        .collect()
}

/// gateway (server span, child of the caller) → TaskService (server span, child of the gateway's) → stored on
/// the task → worker (consumer span in its own trace, linked to the submitting span).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_started_at_the_gateway_reaches_the_worker() {
    let (telemetry, exporter) = telemetry();
    let suite = Suite::start(redline_gateway::Args::default()).await;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let r = suite
        .send(
            Method::POST,
            "/tasks/submit",
            Some("application/json"),
            br#"{"task_name": "redline.echo", "kwargs": {"traced": true}}"#.to_vec(),
            &[("traceparent", &format!("00-{trace}-{caller_span}-01"))],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.header("x-trace-id"), Some(trace));
    let id = r.body["task_id"].as_str().expect("task_id").to_owned();
    suite.wait_status(&id, &["SUCCESS"]).await;

    // The worker's span ends just before its outcome is recorded: poll until it is exported.
    let mut worker_span = None;
    let mut spans = Vec::new();
    for _ in 0..100 {
        telemetry.flush();
        spans = exporter.get_finished_spans().expect("spans");
        worker_span = spans
            .iter()
            .find(|s| {
                s.span_kind == SpanKind::Consumer
                    && s.attributes.iter().any(|kv| {
                        kv.key.as_str() == "messaging.message.id" && kv.value.as_str() == id
                    })
            })
            .cloned();
        if worker_span.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let worker_span = worker_span.expect("the worker exported a consumer span for the task");
    assert_eq!(worker_span.name, "process redline_tasks");

    let in_trace = spans_of_trace(&spans, trace);
    let gateway = in_trace
        .iter()
        .find(|s| s.span_kind == SpanKind::Server && s.name == "POST /tasks/submit")
        .unwrap_or_else(|| panic!("gateway span in the caller's trace: {in_trace:#?}"));
    assert_eq!(gateway.parent_span_id.to_string(), caller_span);
    let task_service = in_trace
        .iter()
        .find(|s| s.name == "redline.tasks.v1.TaskService/SubmitTask")
        .unwrap_or_else(|| panic!("TaskService span in the caller's trace: {in_trace:#?}"));
    assert_eq!(task_service.span_kind, SpanKind::Server);
    assert_eq!(
        task_service.parent_span_id,
        gateway.span_context.span_id(),
        "TaskService continues the gateway's span"
    );

    // The worker runs in a trace of its own, linked to a span of the request's trace.
    assert_ne!(worker_span.span_context.trace_id().to_string(), trace);
    let link = worker_span
        .links
        .iter()
        .find(|l| l.span_context.trace_id().to_string() == trace)
        .unwrap_or_else(|| panic!("worker span links to the request trace: {worker_span:#?}"));
    assert!(
        in_trace
            .iter()
            .any(|s| s.span_context.span_id() == link.span_context.span_id()),
        "the link names a span of the request's trace"
    );
}

/// `/metrics` after a scripted workload: submissions, outcomes, queue depth and age, gateway requests,
/// rate-limit decisions. Every service of this process records into the one recorder behind the admin port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_describe_a_scripted_workload() {
    let _ = telemetry();
    let suite = Suite::start(redline_gateway::Args::default()).await;
    let admin = redline_runtime::admin::spawn(
        "127.0.0.1:0".parse().expect("addr"),
        redline_runtime::admin::Readiness::default(),
        Some(redline_tasks::queue_metrics::collector(
            redline_taskqueue::TaskStore::new(
                redline_taskqueue::connect::client(
                    &suite.redis.url(),
                    &redline_taskqueue::connect::RedisOptions::default(),
                )
                .expect("client"),
                redline_taskqueue::QueueConfig::default(),
            ),
        )),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect("admin port");

    let mut ids = Vec::new();
    for i in 0..3 {
        let r = suite
            .post(
                "/tasks/submit",
                json!({"task_name": "redline.echo", "kwargs": {"i": i}}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        ids.push(r.body["task_id"].as_str().expect("id").to_owned());
    }
    let r = suite
        .post(
            "/tasks/submit",
            json!({"task_name": "redline.fail", "kwargs": {"message": "boom", "retryable": false}}),
        )
        .await;
    let failing = r.body["task_id"].as_str().expect("id").to_owned();
    // Two tasks on a queue no worker consumes: depth 2, and an oldest task that ages.
    for _ in 0..2 {
        let r = suite
            .post(
                "/tasks/submit",
                json!({"task_name": "redline.noop", "queue": "parked"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    for id in &ids {
        suite.wait_status(id, &["SUCCESS"]).await;
    }
    suite.wait_status(&failing, &["FAILURE"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // outcomes are recorded in batches

    let page = scrape(admin).await;
    let value = |series: &str| -> f64 {
        page.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{series} missing from /metrics:\n{page}"))
    };
    assert!(
        value(r#"redline_tasks_submitted_total{task_name="redline.echo",queue="redline_tasks"}"#)
            >= 3.0
    );
    assert!(
        value(r#"redline_tasks_started_total{task_name="redline.echo",queue="redline_tasks"}"#)
            >= 3.0
    );
    assert!(
        value(
            r#"redline_tasks_completed_total{task_name="redline.echo",queue="redline_tasks",outcome="succeeded"}"#
        ) >= 3.0
    );
    assert!(
        value(
            r#"redline_tasks_completed_total{task_name="redline.fail",queue="redline_tasks",outcome="failed"}"#
        ) >= 1.0
    );
    assert_eq!(value(r#"redline_queue_depth{queue="parked"}"#), 2.0);
    assert!(value(r#"redline_queue_oldest_task_age_seconds{queue="parked"}"#) > 0.2);
    assert_eq!(value(r#"redline_queue_depth{queue="redline_tasks"}"#), 0.0);
    assert!(
        value(r#"redline_queue_tasks_total{queue="redline_tasks",outcome="succeeded"}"#) >= 3.0
    );
    assert!(value(r#"redline_workers_alive"#) >= 1.0);
    assert!(
        value(r#"redline_task_run_seconds_count{task_name="redline.echo",queue="redline_tasks"}"#)
            >= 3.0
    );
    assert!(value(r#"redline_task_queue_wait_seconds_count{queue="redline_tasks"}"#) >= 4.0);
    assert!(
        value(
            r#"redline_gateway_requests_total{method="POST",route="/tasks/submit",status="200"}"#
        ) >= 6.0
    );
    assert!(
        value(
            r#"redline_gateway_request_seconds_count{method="GET",route="/tasks/status/{task_id}"}"#
        ) >= 4.0
    );
    assert!(
        page.contains("redline_ratelimit_decisions_total{"),
        "{page}"
    );
    assert!(
        page.contains(r#"outcome="allowed",source="redis"}"#),
        "{page}"
    );
    assert!(
        page.contains("redline_ratelimit_store_seconds_bucket{result=\"ok\""),
        "{page}"
    );
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    let (status, page) = raw_get(addr.port(), "/metrics", &[]).await.expect("scrape");
    assert_eq!(status, 200, "{page}");
    page
}

/// The real `redline-gateway` binary on a free port, its backends away (it serves `/healthz` regardless):
/// the port and the command, for the caller's environment and output settings.
fn gateway_binary() -> (u16, tokio::process::Command) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().expect("addr").port()
    };
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_redline-gateway"));
    command
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--tasks-url",
            "http://127.0.0.1:9",
            "--ratelimit-url",
            "none",
        ])
        .kill_on_drop(true);
    (port, command)
}

/// `REDLINE_LOG_FORMAT=json` in the real binary: one JSON object per line, and a request's line names the
/// caller's trace id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_trace_id() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let (port, mut command) = gateway_binary();
    let mut child = command
        .env("REDLINE_LOG_FORMAT", "json")
        .env_remove("RUST_LOG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("gateway starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let trace = "5d7e5e2d6a1b4c3f9e8d7c6b5a493827";
    // Held open until the end: a client that hangs up early may cancel the request it sent.
    let mut stream = None;
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if stream.is_none()
                && let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
            {
                let request = format!(
                    "GET /healthz HTTP/1.1\r\nHost: x\r\ntraceparent: 00-{trace}-1111111111111111-01\r\n\r\n"
                );
                s.write_all(request.as_bytes()).await.expect("write");
                stream = Some(s);
            }
            let line = tokio::select! {
                l = lines.next_line() => l.expect("read").expect("gateway keeps logging"),
                () = tokio::time::sleep(Duration::from_millis(50)) => continue,
            };
            eprintln!("gateway: {line}");
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
            if v["message"] == "request" {
                return v;
            }
        }
    })
    .await
    .expect("a request line within 20 s");
    assert_eq!(found["trace_id"], trace, "{found}");
    assert_eq!(
        found["span"]["trace_id"], trace,
        "the request span names the trace: {found}"
    );
    assert_eq!(found["status"], 200, "{found}");
}

/// A stand-in OpenTelemetry Collector: the OTLP/gRPC trace service, handing every export to the test.
struct Collector(tokio::sync::mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set, the real binary exports its spans over OTLP/gRPC, named after the
/// service, and flushes them when it shuts down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_when_an_endpoint_is_set() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("collector port");
    let collector = listener.local_addr().expect("addr");
    let (tx, mut exports) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(tx)))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let (port, mut command) = gateway_binary();
    let mut child = command
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}"))
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_SDK_DISABLED")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("gateway starts");
    let trace = "3c2b1a0f9e8d7c6b5a4f3e2d1c0b0a09";
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "gateway never answered"
        );
        let header = format!("00-{trace}-2222222222222222-01");
        if let Ok((status, _)) = raw_get(port, "/healthz", &[("traceparent", &header)]).await {
            assert_eq!(status, 200);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SIGTERM: the gateway drains and flushes its batch of spans before exiting.
    let pid = child.id().expect("pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let exited = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    assert!(exited.is_ok(), "gateway did not exit after SIGTERM");

    let mut found = None;
    while let Ok(Some(export)) = tokio::time::timeout(Duration::from_secs(5), exports.recv()).await
    {
        for rs in export.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.clone())
                .and_then(|v| v.value);
            for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
                let id: String = span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                if id == trace {
                    found = Some((span.name.clone(), service.clone()));
                }
            }
        }
        if found.is_some() {
            break;
        }
    }
    let (name, service) = found.expect("the request's span reached the collector");
    assert_eq!(name, "GET /healthz");
    assert_eq!(
        service,
        Some(
            opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                "redline-gateway".into()
            )
        )
    );
}

/// `GET path` on 127.0.0.1:`port` with extra headers; the status code and the body.
async fn raw_get(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let status = out
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(out.clone()))?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    Ok((status, body.unwrap_or_default()))
}
