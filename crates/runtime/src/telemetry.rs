//! Logs and traces.
//!
//! Every process installs one `tracing` subscriber with two layers: a formatter (text, or one JSON object per
//! line when `REDLINE_LOG_FORMAT=json`) and an OpenTelemetry layer. The OpenTelemetry layer is always present, so
//! every request and every task attempt has a W3C trace id that follows it across processes (gateway →
//! TaskService → task record → worker) and shows in the logs, whether or not anything collects spans. Spans leave
//! the process only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set: OTLP over gRPC, configured by the standard
//! `OTEL_EXPORTER_OTLP_*` and `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` variables.
//!
//! Propagation helpers live here too, so that every service reads and writes `traceparent` the same way:
//! [`extract`] and [`inject`] over HTTP headers (gRPC metadata is an `http::HeaderMap` underneath),
//! [`traceparent`] and [`context_from_traceparent`] for the value stored on a task.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, global};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::LogFormat;

/// Whether spans leave this process (an exporter is installed).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether this process exports spans. Without an exporter a span context is only worth keeping when the caller
/// sent one: nothing else could ever be found under it.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Keeps the tracer provider alive; [`Telemetry::shutdown`] flushes spans not yet exported.
#[derive(Debug)]
#[must_use = "dropping the guard without shutdown() may lose the last spans"]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Exports what is still buffered. Call after draining, before the process exits.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "flushing traces failed");
        }
    }

    /// Forces buffered spans out now (tests read an in-memory exporter after this).
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }
}

/// Installs logging and tracing for the process `service` (the default `service.name` of its spans), reading
/// `REDLINE_LOG_FORMAT`, `RUST_LOG` (default `info`) and the `OTEL_*` variables.
///
/// Must be called inside the Tokio runtime: the OTLP exporter is a tonic client.
pub fn init(service: &'static str) -> Telemetry {
    let format = LogFormat::parse(std::env::var("REDLINE_LOG_FORMAT").ok().as_deref());
    // The standard switch: no trace context at all (no propagation, no trace ids in logs), logs only.
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    let endpoint = !disabled
        && [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty()));
    let exporter = if endpoint {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
        {
            Ok(e) => Some(e),
            Err(e) => {
                eprintln!("OTLP exporter unusable, traces stay in the process: {e}");
                None
            }
        }
    } else {
        None
    };
    let mut builder = SdkTracerProvider::builder().with_resource(resource(service));
    if let Some(exporter) = exporter {
        // Batching runs on its own thread: exporting never sits on a request's path.
        builder = builder.with_batch_exporter(exporter);
        EXPORTING.store(true, Ordering::Relaxed);
    }
    install(builder.build(), format, false, !disabled)
}

/// Like [`init`], but hands every finished span to `exporter` as it ends, and logs through the test harness's
/// captured output: for tests, with an in-memory exporter.
pub fn init_with_exporter(
    service: &'static str,
    format: LogFormat,
    exporter: impl SpanExporter + 'static,
) -> Telemetry {
    let provider = SdkTracerProvider::builder()
        .with_resource(resource(service))
        .with_simple_exporter(exporter)
        .build();
    EXPORTING.store(true, Ordering::Relaxed);
    install(provider, format, true, true)
}

fn resource(service: &'static str) -> Resource {
    // The default detectors read OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; an operator's name wins.
    let builder = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_some() {
        builder.build()
    } else {
        builder.with_service_name(service).build()
    }
}

fn install(
    provider: SdkTracerProvider,
    format: LogFormat,
    captured: bool,
    tracing: bool,
) -> Telemetry {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let otel =
        tracing.then(|| tracing_opentelemetry::layer().with_tracer(provider.tracer("redline")));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    // Later calls are ignored, so tests that start several services in one process share the first subscriber.
    let _ = match format {
        // The request span carries `trace_id`, so every JSON line logged inside it names its trace.
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Text if captured => registry
            .with(tracing_subscriber::fmt::layer().with_test_writer())
            .try_init(),
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init(),
    };
    Telemetry { provider }
}

/// Reads a W3C trace context from HTTP headers or gRPC metadata (an empty context when there is none).
pub fn extract(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderReader(headers))
}

/// Writes `cx` as `traceparent` (and a non-empty `tracestate`) into outgoing headers or gRPC metadata.
pub fn inject(cx: &Context, headers: &mut http::HeaderMap) {
    TraceContextPropagator::new().inject_context(cx, &mut HeaderWriter(headers));
}

/// The `traceparent` of a span, for storing with a task; `None` when the span has no valid context (the
/// OpenTelemetry layer is not installed).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// The span context a stored `traceparent` names (invalid when the value is malformed).
pub fn span_context_from_traceparent(traceparent: &str) -> SpanContext {
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    TraceContextPropagator::new()
        .extract(&carrier)
        .span()
        .span_context()
        .clone()
}

/// Links `span` to the span a stored `traceparent` names (nothing when it is malformed).
pub fn link(span: &tracing::Span, traceparent: &str) {
    let target = span_context_from_traceparent(traceparent);
    if target.is_valid() {
        span.add_link(target);
    }
}

/// Parents `span` on `parent` when it carries a valid remote context, and records the span's trace id in its
/// `trace_id` field (declared `tracing::field::Empty` by the caller) so that log lines name their trace.
///
/// Must be called before the span is first entered: a started span's parent cannot change.
pub fn adopt(span: &tracing::Span, parent: Context) {
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    record_trace_id(span);
}

/// Records the trace id of `span` in its `trace_id` field.
pub fn record_trace_id(span: &tracing::Span) {
    if let Some(id) = trace_id(span) {
        span.record("trace_id", tracing::field::display(id));
    }
}

/// The hexadecimal trace id of `span`, when the OpenTelemetry layer gave it one.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// A span per gRPC call, parented on the caller's `traceparent`; health checks (kubelet probes, every few
/// seconds) get none. For `Server::trace_fn`.
pub fn grpc_server_span(request: &http::Request<()>) -> tracing::Span {
    server_span(request, true)
}

/// [`grpc_server_span`] for a service whose calls are too cheap to trace them all: a call gets its span when it
/// can be followed, that is when the caller sent `traceparent` or this process exports spans. Any other call
/// gets a `debug`-level span, which costs nothing unless `RUST_LOG` asks for it.
///
/// A rate limiter answers tens of thousands of calls a second; an `info` span per call (with its OpenTelemetry
/// data and trace id) costs it about 7 % of its CPU, to give a trace id to log lines that nothing else carries.
pub fn followed_grpc_server_span(request: &http::Request<()>) -> tracing::Span {
    let followed = exporting() || request.headers().contains_key("traceparent");
    server_span(request, followed)
}

/// The server span of a call: at `info` when `followed`, else at `debug`.
fn server_span(request: &http::Request<()>, followed: bool) -> tracing::Span {
    let path = request.uri().path();
    if is_probe(path) {
        return tracing::Span::none();
    }
    let method = path.trim_start_matches('/');
    // A span's level is part of its static callsite, so each level needs its own expansion.
    macro_rules! call_span {
        ($level:expr) => {
            tracing::span!(
                $level,
                "grpc",
                otel.name = %method,
                otel.kind = "server",
                rpc.system = "grpc",
                rpc.method = %method,
                trace_id = tracing::field::Empty,
            )
        };
    }
    let span = if followed {
        call_span!(tracing::Level::INFO)
    } else {
        call_span!(tracing::Level::DEBUG)
    };
    if !span.is_disabled() {
        adopt(&span, extract(request.headers()));
    }
    span
}

/// Health checks (kubelet probes, every few seconds) and reflection get no span.
fn is_probe(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.")
}

struct HeaderReader<'a>(&'a http::HeaderMap);

impl Extractor for HeaderReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderWriter<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderWriter<'_> {
    fn set(&mut self, key: &str, value: String) {
        // An empty `tracestate` is noise on the wire.
        if value.is_empty() {
            return;
        }
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_through_headers() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", tp.parse().unwrap());
        let cx = extract(&headers);
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let mut out = http::HeaderMap::new();
        inject(&cx, &mut out);
        assert_eq!(out.get("traceparent").unwrap(), tp);
        assert!(
            out.get("tracestate").is_none(),
            "empty tracestate is not sent"
        );
    }

    /// The subscriber the binaries install, at the default `info` level, with no exporter.
    fn default_subscriber() -> impl tracing::Subscriber + Send + Sync {
        let provider = SdkTracerProvider::builder().build();
        tracing_subscriber::registry()
            .with(EnvFilter::new("info"))
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
    }

    fn call(path: &str, traceparent: Option<&str>) -> http::Request<()> {
        let mut request = http::Request::builder().uri(path);
        if let Some(tp) = traceparent {
            request = request.header("traceparent", tp);
        }
        request.body(()).unwrap()
    }

    #[test]
    fn only_followed_calls_get_a_span_on_a_hot_path() {
        assert!(!exporting());
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        tracing::subscriber::with_default(default_subscriber(), || {
            let method = "/redline.ratelimit.v1.RateLimitService/Check";
            // Every call of an ordinary service gets its span and a trace id.
            assert!(trace_id(&grpc_server_span(&call(method, None))).is_some());
            // On a hot path, a call from an untraced caller to a service that exports nothing gets none...
            assert!(followed_grpc_server_span(&call(method, None)).is_disabled());
            // ...and a traced caller's call continues its trace.
            let traced = followed_grpc_server_span(&call(method, Some(tp)));
            assert_eq!(
                trace_id(&traced).as_deref(),
                Some("4bf92f3577b34da6a3ce929d0e0e4736")
            );
            let probe = "/grpc.health.v1.Health/Check";
            assert!(followed_grpc_server_span(&call(probe, Some(tp))).is_disabled());
        });
    }

    #[test]
    fn malformed_traceparent_gives_an_invalid_context() {
        assert!(!span_context_from_traceparent("00-zz-yy-01").is_valid());
        assert!(
            span_context_from_traceparent(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            )
            .is_valid()
        );
    }
}
