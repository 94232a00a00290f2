//! The `redline-gateway` binary as deployed: its log format and its span export, observed from outside the
//! process (its backends are away; it serves `/healthz` regardless).

use std::net::SocketAddr;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use redline_testkit::raw_get;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The real `redline-gateway` binary on a free port, its backends away (it serves `/healthz` regardless):
/// the port and the command, for the caller's environment and output settings.
fn gateway_binary() -> (u16, tokio::process::Command) {
    let port = redline_testkit::free_port();
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
        if let Ok((status, _)) = raw_get(addr(port), "/healthz", &[("traceparent", &header)]).await
        {
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
