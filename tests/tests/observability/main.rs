//! Observability end to end: a trace started at the gateway reaches the worker's span, and `/metrics` shows
//! what a scripted workload did. The suite runs in this process with an in-memory span exporter, so every
//! service's spans land in one place. (The binaries' own log and export behaviour is tested beside each
//! binary, e.g. `gateway/tests/binary`.)

use std::sync::OnceLock;
use std::time::Duration;

use hyper::{Method, StatusCode};
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use redline_runtime::telemetry::{self, Telemetry};
use redline_testkit::Suite;
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
    let suite = Suite::builder().ratelimit(&[]).gateway(&[]).start().await;
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
    let suite = Suite::builder().ratelimit(&[]).gateway(&[]).start().await;
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
    let (status, page) = redline_testkit::raw_get(addr, "/metrics", &[])
        .await
        .expect("scrape");
    assert_eq!(status, 200, "{page}");
    page
}
