//! Handlers of the diagnostic task types (`redline.noop`, `echo`, `sleep`, `fail`), declared in
//! `redline_catalog::diagnostics`.

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use redline_catalog::diagnostics::{
    Echo, Fail, FailArgs, NoArgs, Noop, Sleep, SleepArgs, SleepResult,
};
use serde_json::{Map, Value};

use crate::registry::{Registry, TaskContext, TaskError, TaskHandler};

impl TaskHandler for Noop {
    type Task = Self;

    fn run(&self, _: TaskContext, _: NoArgs) -> BoxFuture<'static, Result<(), TaskError>> {
        futures::future::ready(Ok(())).boxed()
    }
}

impl TaskHandler for Echo {
    type Task = Self;

    fn run(
        &self,
        _: TaskContext,
        kwargs: Map<String, Value>,
    ) -> BoxFuture<'static, Result<Map<String, Value>, TaskError>> {
        futures::future::ready(Ok(kwargs)).boxed()
    }
}

impl TaskHandler for Sleep {
    type Task = Self;

    fn run(
        &self,
        ctx: TaskContext,
        args: SleepArgs,
    ) -> BoxFuture<'static, Result<SleepResult, TaskError>> {
        let seconds = args.seconds.get();
        async move {
            let total = Duration::from_secs_f64(seconds);
            let start = tokio::time::Instant::now();
            loop {
                let elapsed = start.elapsed();
                if elapsed >= total {
                    break;
                }
                let pct = elapsed.as_secs_f64() / total.as_secs_f64() * 100.0;
                ctx.progress("sleeping", (pct * 10.0).round() / 10.0, Map::new())
                    .await;
                let step = (total - elapsed).min(Duration::from_secs(1));
                tokio::select! {
                    _ = tokio::time::sleep(step) => {}
                    _ = ctx.cancellation().cancelled() => return Err(TaskError::Cancelled),
                }
            }
            Ok(SleepResult { slept: seconds })
        }
        .boxed()
    }
}

impl TaskHandler for Fail {
    type Task = Self;

    fn run(&self, _: TaskContext, args: FailArgs) -> BoxFuture<'static, Result<(), TaskError>> {
        let message = args
            .message
            .unwrap_or_else(|| "redline.fail was asked to fail".to_owned());
        let err = if args.retryable.unwrap_or(true) {
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
