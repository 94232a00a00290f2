//! Task types: the [`TaskHandler`] trait, the [`Registry`] of handlers, and what a running handler can do
//! through its [`TaskContext`] (report progress, notice cancellation).

use std::collections::HashMap;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use redline_catalog::{Catalog, TaskSpec, TaskType};
use redline_taskqueue::TaskStore;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

/// How a handler failed, which decides whether the task is retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// Worth another attempt (after a backoff), while the retry budget lasts.
    #[error("{0}")]
    Retryable(String),
    /// Retrying cannot help (bad input, missing file): the task fails at once.
    #[error("{0}")]
    Fatal(String),
    /// The handler stopped because cancellation was requested.
    #[error("cancelled")]
    Cancelled,
}

/// The code that runs one task type of the catalogue (`redline_catalog::TaskType`), with its typed
/// arguments and result. The registry deserializes the stored arguments into `Args` (TaskService already
/// validated them against the same type) and serializes the result.
pub trait TaskHandler: Send + Sync + 'static {
    /// The declaration this handler runs.
    type Task: TaskType;

    /// Runs one attempt.
    fn run(
        &self,
        ctx: TaskContext,
        args: <Self::Task as TaskType>::Args,
    ) -> BoxFuture<'static, Result<<Self::Task as TaskType>::Output, TaskError>>;
}

/// A handler with its types erased: JSON in, JSON out.
trait Erased: Send + Sync {
    fn run(
        &self,
        ctx: TaskContext,
        kwargs: Map<String, Value>,
    ) -> BoxFuture<'static, Result<Value, TaskError>>;
}

impl<H: TaskHandler> Erased for H {
    fn run(
        &self,
        ctx: TaskContext,
        kwargs: Map<String, Value>,
    ) -> BoxFuture<'static, Result<Value, TaskError>> {
        // A record TaskService accepted deserializes; one written by another version might not, and retrying
        // cannot fix it.
        let args = match serde_json::from_value(Value::Object(kwargs)) {
            Ok(args) => args,
            Err(e) => {
                return futures::future::ready(Err(TaskError::Fatal(format!(
                    "invalid arguments: {e}"
                ))))
                .boxed();
            }
        };
        let attempt = TaskHandler::run(self, ctx, args);
        async move {
            let output = attempt.await?;
            serde_json::to_value(output)
                .map_err(|e| TaskError::Fatal(format!("result not serializable: {e}")))
        }
        .boxed()
    }
}

/// What a running handler can see and do.
#[derive(Clone)]
pub struct TaskContext {
    /// Task id.
    pub task_id: String,
    /// Attempt number (1 for the first run).
    pub attempt: u32,
    fence: u64,
    cancel: CancellationToken,
    store: TaskStore,
}

impl std::fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskContext")
            .field("task_id", &self.task_id)
            .field("attempt", &self.attempt)
            .field("fence", &self.fence)
            .finish_non_exhaustive()
    }
}

impl TaskContext {
    pub(crate) fn new(
        task_id: String,
        attempt: u32,
        fence: u64,
        cancel: CancellationToken,
        store: TaskStore,
    ) -> Self {
        Self {
            task_id,
            attempt,
            fence,
            cancel,
            store,
        }
    }

    /// Cancelled when the task was cancelled, hit its time limit, or its worker lost the lease. A handler
    /// should stop soon after; one that doesn't is aborted after a grace period.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// The attempt's fencing token: it grows with every claim of the task, so two attempts of one task never
    /// share it (an execution journal or an external side effect can key on it).
    pub fn fence(&self) -> u64 {
        self.fence
    }

    /// True once the handler should stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Reports progress (`{step, progress, ...details}`, REDLINE's PROGRESS meta), visible in GetTask and
    /// streamed by WatchTask. Failures to store progress are logged, never fatal to the task.
    pub async fn progress(&self, step: &str, progress: f64, details: Map<String, Value>) {
        let mut meta = details;
        meta.insert("step".to_owned(), Value::from(step));
        meta.insert("progress".to_owned(), Value::from(progress));
        if let Err(e) = self
            .store
            .progress(&self.task_id, self.fence, &Value::Object(meta))
            .await
        {
            tracing::warn!(task_id = %self.task_id, error = %e, "progress not stored");
        }
    }

    /// [`Self::progress`] from synchronous code running under `spawn_blocking`.
    pub fn progress_blocking(&self, step: &str, progress: f64, details: Map<String, Value>) {
        let handle = tokio::runtime::Handle::current();
        handle.block_on(self.progress(step, progress, details));
    }
}

/// A handler ready to run: the stored keyword arguments in, the result as JSON out.
#[derive(Clone)]
pub struct Runner(Arc<dyn Erased>);

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Runner")
    }
}

impl Runner {
    /// Runs one attempt with bound keyword arguments.
    pub fn run(
        &self,
        ctx: TaskContext,
        kwargs: Map<String, Value>,
    ) -> BoxFuture<'static, Result<Value, TaskError>> {
        self.0.run(ctx, kwargs)
    }
}

/// The task types a worker runs, by name and alias.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: Vec<(TaskSpec, Runner)>,
    by_name: HashMap<String, usize>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.handlers.iter().map(|(s, _)| &s.name))
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a handler under its type's name and aliases.
    pub fn register<H: TaskHandler>(&mut self, handler: H) -> &mut Self {
        let spec = TaskSpec::of::<H::Task>();
        let index = self.handlers.len();
        self.by_name.insert(spec.name.clone(), index);
        for alias in &spec.aliases {
            self.by_name.insert(alias.clone(), index);
        }
        self.handlers.push((spec, Runner(Arc::new(handler))));
        self
    }

    /// The declaration and handler for `name` (canonical or alias).
    pub fn get(&self, name: &str) -> Option<(&TaskSpec, Runner)> {
        self.by_name
            .get(name)
            .and_then(|i| self.handlers.get(*i))
            .map(|(s, h)| (s, h.clone()))
    }

    /// The declarations, for publication and validation.
    pub fn catalog(&self) -> Catalog {
        Catalog::new(self.handlers.iter().map(|(s, _)| s.clone()).collect())
    }
}
