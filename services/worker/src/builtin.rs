//! Diagnostic task types used by tests, benchmarks and operators: `redline.noop`, `redline.echo`,
//! `redline.sleep` and `redline.fail`. Their declarations live in `redline_taskqueue::catalog::diagnostics`
//! so TaskService validates them without linking this crate.

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use redline_taskqueue::catalog::{TaskSpec, diagnostics};
use serde_json::{Map, Value, json};

use crate::registry::{Registry, TaskContext, TaskError, TaskHandler};

fn spec(name: &str) -> TaskSpec {
    diagnostics()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| TaskSpec::new(name, "", Vec::new()))
}

/// Succeeds at once with a null result.
pub struct Noop;

impl TaskHandler for Noop {
    fn spec(&self) -> TaskSpec {
        spec("redline.noop")
    }

    fn run(
        &self,
        _: TaskContext,
        _: Map<String, Value>,
    ) -> BoxFuture<'static, Result<Value, TaskError>> {
        futures::future::ready(Ok(Value::Null)).boxed()
    }
}

/// Returns its keyword arguments.
pub struct Echo;

impl TaskHandler for Echo {
    fn spec(&self) -> TaskSpec {
        spec("redline.echo")
    }

    fn run(
        &self,
        _: TaskContext,
        kwargs: Map<String, Value>,
    ) -> BoxFuture<'static, Result<Value, TaskError>> {
        futures::future::ready(Ok(Value::Object(kwargs))).boxed()
    }
}

/// Sleeps `seconds`, reporting progress every second, and stops early when cancelled.
pub struct Sleep;

impl TaskHandler for Sleep {
    fn spec(&self) -> TaskSpec {
        spec("redline.sleep")
    }

    fn run(
        &self,
        ctx: TaskContext,
        kwargs: Map<String, Value>,
    ) -> BoxFuture<'static, Result<Value, TaskError>> {
        let seconds = kwargs
            .get("seconds")
            .and_then(Value::as_f64)
            .unwrap_or(0.0)
            .clamp(0.0, 86_400.0);
        async move {
            let total = Duration::from_secs_f64(seconds);
            let start = tokio::time::Instant::now();
            loop {
                let elapsed = start.elapsed();
                if elapsed >= total {
                    break;
                }
                let pct = if total.is_zero() {
                    100.0
                } else {
                    elapsed.as_secs_f64() / total.as_secs_f64() * 100.0
                };
                ctx.progress("sleeping", (pct * 10.0).round() / 10.0, Map::new())
                    .await;
                let step = (total - elapsed).min(Duration::from_secs(1));
                tokio::select! {
                    _ = tokio::time::sleep(step) => {}
                    _ = ctx.cancellation().cancelled() => return Err(TaskError::Cancelled),
                }
            }
            Ok(json!({ "slept": seconds }))
        }
        .boxed()
    }
}

/// Fails with `message`; retryable unless `retryable` is false.
pub struct Fail;

impl TaskHandler for Fail {
    fn spec(&self) -> TaskSpec {
        spec("redline.fail")
    }

    fn run(
        &self,
        _: TaskContext,
        kwargs: Map<String, Value>,
    ) -> BoxFuture<'static, Result<Value, TaskError>> {
        let message = kwargs
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("redline.fail was asked to fail")
            .to_owned();
        let retryable = kwargs
            .get("retryable")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let err = if retryable {
            TaskError::Retryable(message)
        } else {
            TaskError::Fatal(message)
        };
        futures::future::ready(Err(err)).boxed()
    }
}

/// Registers the diagnostic types.
pub fn register(registry: &mut Registry) {
    registry
        .register(Noop)
        .register(Echo)
        .register(Sleep)
        .register(Fail);
}
