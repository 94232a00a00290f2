//! REDLINE's data tasks (`process_data_conversion`, `_analysis`, `_download`, `process_file_upload`,
//! `process_bulk_operations`) as worker task types over the `redline-convert` library.
//!
//! The library functions are synchronous and stream record batches, so each attempt runs on a blocking
//! thread. Progress goes to Redis through the attempt's fenced context, throttled (a step change, or at most
//! every 200 ms) so a fast conversion doesn't spend its time on round trips. Cancellation is polled by the
//! library between batches. Library errors keep their classification: I/O hiccups and upstream 5xx are
//! retried, bad input and malformed data fail at once.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use redline_catalog::TaskType;
use redline_catalog::data::{Analysis, Bulk, Conversion, Download, Upload};
use redline_convert::DataError;
use redline_convert::tasks::{self, DataContext, Progress};

use crate::registry::{Registry, TaskContext, TaskError, TaskHandler};

/// A data task type: which library function runs it.
trait DataTask: TaskType<Args: Sync> {
    fn call(
        ctx: &DataContext,
        args: &Self::Args,
        progress: &mut dyn FnMut(Progress),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Self::Output, DataError>;
}

/// Each data task type runs its library function.
macro_rules! data_tasks {
    ($($task:ty => $function:path),+ $(,)?) => {
        $(
            impl DataTask for $task {
                fn call(
                    ctx: &DataContext,
                    args: &Self::Args,
                    progress: &mut dyn FnMut(Progress),
                    cancelled: &dyn Fn() -> bool,
                ) -> Result<Self::Output, DataError> {
                    $function(ctx, args, progress, cancelled)
                }
            }
        )+
    };
}

data_tasks! {
    Conversion => tasks::process_data_conversion,
    Analysis => tasks::process_data_analysis,
    Upload => tasks::process_file_upload,
    Download => tasks::process_data_download,
    Bulk => tasks::process_bulk_operations,
}

/// The handler of data task type `T`, over one data root.
struct DataHandler<T> {
    data: Arc<DataContext>,
    task: PhantomData<fn() -> T>,
}

impl<T: DataTask> TaskHandler for DataHandler<T> {
    type Task = T;

    fn run(
        &self,
        ctx: TaskContext,
        args: T::Args,
    ) -> BoxFuture<'static, Result<T::Output, TaskError>> {
        // Outputs belong to the task: a later attempt of it may replace what an earlier one wrote.
        let data = self.data.for_task(&ctx.task_id);
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
                T::call(&data, &args, &mut progress, &|| cancel.is_cancelled())
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

fn handler<T>(data: &Arc<DataContext>) -> DataHandler<T> {
    DataHandler {
        data: Arc::clone(data),
        task: PhantomData,
    }
}

/// Registers the data task types, resolving paths inside `data`'s root.
pub fn register(registry: &mut Registry, data: DataContext) {
    let data = Arc::new(data);
    registry
        .register(handler::<Conversion>(&data))
        .register(handler::<Analysis>(&data))
        .register(handler::<Upload>(&data))
        .register(handler::<Download>(&data))
        .register(handler::<Bulk>(&data));
}
