//! REDLINE's data tasks (`process_data_conversion`, `_analysis`, `_download`, `process_file_upload`,
//! `process_bulk_operations`) as worker task types over the `redline-convert` library.
//!
//! The library functions are synchronous and stream record batches, so each attempt runs on a blocking
//! thread. Progress goes to Redis through the attempt's fenced context, throttled (a step change, or at most
//! every 200 ms) so a fast conversion doesn't spend its time on round trips. Cancellation is polled by the
//! library between batches. Library errors keep their classification: I/O hiccups and upstream 5xx are
//! retried, bad input and malformed data fail at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use redline_convert::tasks::{self, DataContext, Progress};
use redline_taskqueue::catalog::{TaskSpec, data_tasks};
use serde_json::{Map, Value};

use crate::registry::{Registry, TaskContext, TaskError, TaskHandler};

/// Which library function a task type calls.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Conversion,
    Analysis,
    Upload,
    Download,
    Bulk,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Conversion => "process_data_conversion",
            Self::Analysis => "process_data_analysis",
            Self::Upload => "process_file_upload",
            Self::Download => "process_data_download",
            Self::Bulk => "process_bulk_operations",
        }
    }
}

/// One data task type.
struct DataTask {
    kind: Kind,
    data: Arc<DataContext>,
}

fn text<'a>(kwargs: &'a Map<String, Value>, key: &str) -> &'a str {
    kwargs.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn options(kwargs: &Map<String, Value>) -> Value {
    kwargs.get("options").cloned().unwrap_or(Value::Null)
}

impl TaskHandler for DataTask {
    fn spec(&self) -> TaskSpec {
        let name = self.kind.name();
        data_tasks()
            .into_iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| TaskSpec::new(name, "", Vec::new()))
    }

    fn run(
        &self,
        ctx: TaskContext,
        kwargs: Map<String, Value>,
    ) -> BoxFuture<'static, Result<Value, TaskError>> {
        let kind = self.kind;
        let data = Arc::clone(&self.data);
        async move {
            let cancel = ctx.cancellation().clone();
            let reporter = ctx.clone();
            let outcome = tokio::task::spawn_blocking(move || {
                let mut last: Option<(String, Instant)> = None;
                let mut progress = |p: Progress| {
                    let due = match &last {
                        Some((step, at)) => {
                            *step != p.step || at.elapsed() >= Duration::from_millis(200)
                        }
                        None => true,
                    };
                    if due {
                        last = Some((p.step.clone(), Instant::now()));
                        reporter.progress_blocking(&p.step, p.progress, p.details);
                    }
                };
                let cancelled = || cancel.is_cancelled();
                let k = &kwargs;
                match kind {
                    Kind::Conversion => tasks::process_data_conversion(
                        &data,
                        text(k, "input_file"),
                        text(k, "output_format"),
                        text(k, "output_file"),
                        &options(k),
                        &mut progress,
                        &cancelled,
                    ),
                    Kind::Analysis => tasks::process_data_analysis(
                        &data,
                        text(k, "data_file"),
                        text(k, "analysis_type"),
                        &options(k),
                        &mut progress,
                        &cancelled,
                    ),
                    Kind::Upload => tasks::process_file_upload(
                        &data,
                        text(k, "file_path"),
                        k.get("target_format").and_then(Value::as_str),
                        &options(k),
                        &mut progress,
                        &cancelled,
                    ),
                    Kind::Download => tasks::process_data_download(
                        &data,
                        text(k, "ticker"),
                        text(k, "start_date"),
                        text(k, "end_date"),
                        k.get("source").and_then(Value::as_str).unwrap_or("stooq"),
                        &options(k),
                        &mut progress,
                        &cancelled,
                    ),
                    Kind::Bulk => tasks::process_bulk_operations(
                        &data,
                        k.get("operations").unwrap_or(&Value::Null),
                        &options(k),
                        &mut progress,
                        &cancelled,
                    ),
                }
            })
            .await;
            match outcome {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(_)) if ctx.is_cancelled() => Err(TaskError::Cancelled),
                Ok(Err(e)) if e.retryable() => Err(TaskError::Retryable(e.to_string())),
                Ok(Err(e)) => Err(TaskError::Fatal(e.to_string())),
                Err(join) => Err(TaskError::Retryable(format!("data task panicked: {join}"))),
            }
        }
        .boxed()
    }
}

/// Registers the data task types, resolving paths inside `data`'s root.
pub fn register(registry: &mut Registry, data: DataContext) {
    let data = Arc::new(data);
    for kind in [
        Kind::Conversion,
        Kind::Analysis,
        Kind::Upload,
        Kind::Download,
        Kind::Bulk,
    ] {
        registry.register(DataTask {
            kind,
            data: Arc::clone(&data),
        });
    }
}
