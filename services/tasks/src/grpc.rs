//! The TaskService gRPC handlers: validate, convert proto ↔ domain, call the store.

use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::Stream;
use redline_catalog::{Catalog, DEFAULT_MAX_RETRIES, DEFAULT_TIME_LIMIT, FieldViolation, TaskSpec};
use redline_proto::json;
use redline_proto::tasks::task_service_server::TaskService;
use redline_proto::tasks::*;
use redline_taskqueue::keys::PRIORITIES;
use redline_taskqueue::{
    CancelOutcome, Cursor, DEFAULT_QUEUE, ListFilter, NewTask, RetryOutcome, TaskRecord, TaskState,
    TaskStore,
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::error::{ServiceError, fail};
use crate::submitter::{SubmitFailure, Submitter};
use crate::watch::WatchHub;

/// Furthest a countdown or eta may reach (a year and a day: "same day next year" stays valid).
const MAX_DELAY: Duration = Duration::from_secs(366 * 86_400);

/// Limits applied to submissions.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted `args` + `kwargs`, in bytes of JSON.
    pub max_payload: usize,
    /// Most tasks in one SubmitTasks call.
    pub max_batch: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload: 1 << 20,
            max_batch: 1000,
        }
    }
}

/// The TaskService implementation.
#[derive(Clone)]
pub struct TaskServiceImpl {
    store: TaskStore,
    submitter: Submitter,
    hub: WatchHub,
    catalog: Arc<RwLock<Catalog>>,
    limits: Limits,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for TaskServiceImpl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskServiceImpl")
            .field("store", &self.store)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl TaskServiceImpl {
    /// A service over `store`, validating against `catalog` (shared with the refresher that adds types
    /// published by workers).
    pub fn new(
        store: TaskStore,
        hub: WatchHub,
        catalog: Arc<RwLock<Catalog>>,
        limits: Limits,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            submitter: Submitter::spawn(store.clone()),
            store,
            hub,
            catalog,
            limits,
            shutdown,
        }
    }

    fn catalog(&self) -> std::sync::RwLockReadGuard<'_, Catalog> {
        self.catalog
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Validates one submission and builds the task; field paths are prefixed with `prefix`.
    fn new_task(
        &self,
        req: &SubmitTaskRequest,
        traceparent: Option<&str>,
        prefix: &str,
    ) -> Result<NewTask, Vec<FieldViolation>> {
        let mut v = Vec::new();
        let field = |f: &str| format!("{prefix}{f}");
        // The read guard is held for the whole (synchronous) validation: specs are borrowed, not cloned.
        let catalog = self.catalog();
        let spec: Option<&TaskSpec> = if req.task_name.is_empty() {
            v.push(FieldViolation::new(
                field("task_name"),
                "task_name is required",
            ));
            None
        } else {
            let found = catalog.resolve(&req.task_name);
            if found.is_none() {
                v.push(FieldViolation::new(
                    field("task_name"),
                    format!(
                        "unknown task '{}'; registered: {}",
                        req.task_name,
                        catalog.names().join(", ")
                    ),
                ));
            }
            found
        };

        let args = req
            .args
            .as_ref()
            .map(json::from_list)
            .unwrap_or_else(|| serde_json::json!([]));
        let kwargs = req
            .kwargs
            .as_ref()
            .map(json::from_struct)
            .unwrap_or_else(|| serde_json::json!({}));
        let size = args.to_string().len() + kwargs.to_string().len();
        if size > self.limits.max_payload {
            v.push(FieldViolation::new(
                field("kwargs"),
                format!(
                    "arguments are {size} bytes; the limit is {} bytes",
                    self.limits.max_payload
                ),
            ));
        } else if let Some(spec) = spec {
            let empty = serde_json::Map::new();
            if let Err(problems) = spec.bind(
                args.as_array().map(Vec::as_slice).unwrap_or(&[]),
                kwargs.as_object().unwrap_or(&empty),
            ) {
                v.extend(
                    problems
                        .into_iter()
                        .map(|p| FieldViolation::new(field(&p.field), p.description)),
                );
            }
        }

        let queue = if req.queue.is_empty() {
            DEFAULT_QUEUE.to_owned()
        } else {
            req.queue.clone()
        };
        if let Err(e) = redline_taskqueue::keys::check_queue_name(&queue) {
            v.push(FieldViolation::new(field("queue"), e));
        }
        let priority = req.priority.unwrap_or(5);
        if priority >= u32::from(PRIORITIES) {
            v.push(FieldViolation::new(
                field("priority"),
                "must be from 0 to 9",
            ));
        }
        let max_retries = req
            .max_retries
            .unwrap_or_else(|| spec.as_ref().map_or(DEFAULT_MAX_RETRIES, |s| s.max_retries));
        if max_retries > 100 {
            v.push(FieldViolation::new(
                field("max_retries"),
                "must be at most 100",
            ));
        }
        let time_limit = match req.time_limit.map(|d| Duration::try_from(d).ok()) {
            None => spec.as_ref().map_or(DEFAULT_TIME_LIMIT, |s| s.time_limit),
            Some(Some(d)) if !d.is_zero() && d <= Duration::from_secs(7 * 86_400) => d,
            Some(_) => {
                v.push(FieldViolation::new(
                    field("time_limit"),
                    "must be positive and at most 7 days",
                ));
                Duration::ZERO
            }
        };
        let countdown = match req.countdown.map(|d| Duration::try_from(d).ok()) {
            None => None,
            Some(Some(d)) if d <= MAX_DELAY => Some(d),
            Some(_) => {
                v.push(FieldViolation::new(
                    field("countdown"),
                    "must be non-negative and at most a year",
                ));
                None
            }
        };
        // As far ahead as a countdown may reach: a scheduled task waits in Redis, and one due in the year 9000
        // would hold its memory for good.
        let horizon_ms = redline_runtime::clock::epoch_ms() + MAX_DELAY.as_millis() as u64;
        let eta_ms = match req.eta.as_ref().map(json::epoch_ms) {
            None => None,
            Some(Some(ms)) if ms <= horizon_ms => Some(ms),
            Some(Some(_)) => {
                v.push(FieldViolation::new(
                    field("eta"),
                    "must be at most a year from now",
                ));
                None
            }
            Some(None) => {
                v.push(FieldViolation::new(
                    field("eta"),
                    "must be a valid time after 1970",
                ));
                None
            }
        };
        if countdown.is_some() && eta_ms.is_some() {
            v.push(FieldViolation::new(
                field("eta"),
                "give either countdown or eta, not both",
            ));
        }
        if req.idempotency_key.len() > 256 || req.idempotency_key.chars().any(char::is_control) {
            v.push(FieldViolation::new(
                field("idempotency_key"),
                "must be at most 256 printable characters",
            ));
        }
        if !v.is_empty() {
            return Err(v);
        }
        let spec = spec.ok_or_else(Vec::new)?;
        let mut task = NewTask::new(spec.name.clone(), queue);
        task.args = args;
        task.kwargs = kwargs;
        task.priority = priority as u8;
        task.max_retries = max_retries;
        task.time_limit = time_limit;
        task.countdown = countdown;
        task.eta_ms = eta_ms;
        task.idempotency_key = Some(req.idempotency_key.clone()).filter(|k| !k.is_empty());
        task.traceparent = traceparent.map(str::to_owned);
        Ok(task)
    }

    async fn submit_one(
        &self,
        task: NewTask,
        name: &str,
    ) -> Result<SubmitTaskResponse, ServiceError> {
        let queue = task.queue.clone();
        match self.submitter.submit(task).await {
            Ok(s) => {
                if !s.duplicate {
                    count_submitted(name, &queue);
                }
                Ok(SubmitTaskResponse {
                    message: format!("Task {name} submitted successfully"),
                    task_id: s.id,
                    status: "submitted".to_owned(),
                    state: proto_state(s.state) as i32,
                    duplicate: s.duplicate,
                })
            }
            Err(SubmitFailure::Store(e)) => Err(e.into()),
            Err(SubmitFailure::Stopped) => Err(ServiceError::SubmitterStopped),
        }
    }

    async fn record(&self, id: &str) -> Result<TaskRecord, ServiceError> {
        check_id(id)?;
        self.store
            .get(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(id.to_owned()))
    }
}

/// The trace context stored with a task: this call's span (a child of the caller's when it sent
/// `traceparent`), so that the worker's span links back to the request that created the task.
///
/// Stored only when it can lead somewhere: the caller is tracing, or this process exports its spans. An
/// untraced submit to an unobserved service stores nothing (a queued task stays small). Without the
/// OpenTelemetry layer (a library user's own subscriber), the caller's header is stored as it came.
fn traceparent<T>(req: &Request<T>) -> Option<String> {
    let caller = req
        .metadata()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128);
    if caller.is_none() && !redline_runtime::telemetry::exporting() {
        return None;
    }
    redline_runtime::telemetry::traceparent(&tracing::Span::current())
        .or_else(|| caller.map(str::to_owned))
}

/// Counts accepted submissions (a repeated idempotency key is not a new task).
fn count_submitted(task_name: &str, queue: &str) {
    metrics::counter!(
        "redline_tasks_submitted_total",
        "task_name" => task_name.to_owned(),
        "queue" => queue.to_owned()
    )
    .increment(1);
}

/// Task ids are generated UUIDs; anything that can't be an id is rejected before touching Redis.
fn check_id(id: &str) -> Result<(), ServiceError> {
    if id.is_empty() {
        return Err(ServiceError::invalid("task_id", "task_id is required"));
    }
    if id.len() > 128
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ServiceError::invalid("task_id", "not a valid task id"));
    }
    Ok(())
}
/// A duration as protobuf's (saturating: no duration here is near the 292-billion-year limit).
fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 0,
    })
}

/// The proto enum of a state.
pub fn proto_state(s: TaskState) -> redline_proto::tasks::TaskState {
    use redline_proto::tasks::TaskState as P;
    match s {
        TaskState::Queued => P::Queued,
        TaskState::Scheduled => P::Scheduled,
        TaskState::Running => P::Running,
        TaskState::Succeeded => P::Succeeded,
        TaskState::Failed => P::Failed,
        TaskState::Cancelled => P::Cancelled,
    }
}

/// The Celery status REDLINE clients know (`PENDING`, `STARTED`, `PROGRESS`, `RETRY`, `SUCCESS`, `FAILURE`,
/// `REVOKED`).
pub fn celery_status(r: &TaskRecord) -> &'static str {
    match r.state {
        TaskState::Queued => "PENDING",
        TaskState::Scheduled if r.retries > 0 => "RETRY",
        TaskState::Scheduled => "PENDING",
        TaskState::Running if r.progress.is_some() => "PROGRESS",
        TaskState::Running => "STARTED",
        TaskState::Succeeded => "SUCCESS",
        TaskState::Failed => "FAILURE",
        TaskState::Cancelled => "REVOKED",
    }
}

/// States matching a `status` filter: a Celery status or a state name, case-insensitive.
fn states_for(status: &str) -> Option<Vec<TaskState>> {
    use TaskState::*;
    Some(match status.to_ascii_uppercase().as_str() {
        "" => vec![],
        "PENDING" => vec![Queued, Scheduled],
        "QUEUED" => vec![Queued],
        "SCHEDULED" | "RETRY" => vec![Scheduled],
        "STARTED" | "PROGRESS" | "RUNNING" => vec![Running],
        "SUCCESS" | "SUCCEEDED" => vec![Succeeded],
        "FAILURE" | "FAILED" => vec![Failed],
        "REVOKED" | "CANCELLED" | "CANCELED" => vec![Cancelled],
        _ => return None,
    })
}

/// A record as the proto `Task`.
pub fn proto_task(r: &TaskRecord) -> Task {
    Task {
        task_id: r.id.clone(),
        task_name: r.name.clone(),
        args: Some(json::to_list(r.args.as_array().map_or(&[], Vec::as_slice))),
        kwargs: Some(json::to_struct(
            r.kwargs.as_object().unwrap_or(&serde_json::Map::new()),
        )),
        queue: r.queue.clone(),
        priority: u32::from(r.priority),
        state: proto_state(r.state) as i32,
        status: celery_status(r).to_owned(),
        attempt: r.attempt,
        max_retries: r.max_retries,
        time_limit: Some(proto_duration(r.time_limit)),
        eta: r.eta_ms.map(json::timestamp_ms),
        idempotency_key: r.idempotency_key.clone().unwrap_or_default(),
        submitted_at: Some(json::timestamp_us(r.submitted_us)),
        started_at: r.started_us.map(json::timestamp_us),
        completed_at: r.completed_us.map(json::timestamp_us),
        progress: r.progress.as_ref().map(proto_progress),
        result: r.result.as_ref().map(json::to_value),
        error: r.error.clone().unwrap_or_default(),
        worker_id: r.worker_id.clone().unwrap_or_default(),
        traceparent: r.traceparent.clone().unwrap_or_default(),
        cancel_requested: r.cancel_requested,
        recoveries: r.recoveries,
    }
}

fn proto_progress(p: &serde_json::Value) -> Progress {
    let mut details = p.as_object().cloned().unwrap_or_default();
    let step = details
        .remove("step")
        .and_then(|s| s.as_str().map(str::to_owned))
        .unwrap_or_default();
    let progress = details
        .remove("progress")
        .and_then(|p| p.as_f64())
        .unwrap_or(0.0);
    Progress {
        step,
        progress,
        details: Some(json::to_struct(&details)),
    }
}

fn spec_to_proto(s: &TaskSpec) -> TaskType {
    TaskType {
        name: s.name.clone(),
        aliases: s.aliases.clone(),
        description: s.description.clone(),
        arguments: s
            .arguments()
            .into_iter()
            .map(|(name, schema)| ArgumentSpec {
                name: name.to_owned(),
                r#type: argument_type(schema).to_owned(),
                required: s.is_required(name),
                description: schema["description"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                allowed_values: schema["enum"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
            })
            .collect(),
        max_retries: s.max_retries,
        time_limit: Some(proto_duration(s.time_limit)),
        arguments_schema: s.args_schema.to_string(),
        result_schema: s.result_schema.to_string(),
        positional: s.positional.clone(),
    }
}

/// The one-word type of an argument's schema: its JSON type (nullable or not), `path` for a data path, `any`
/// when the schema does not restrict it.
fn argument_type(schema: &serde_json::Value) -> &str {
    if schema["format"] == "relative-path" {
        return "path";
    }
    redline_catalog::spec::json_types(schema)
        .and_then(|types| types.into_iter().find(|t| *t != "null"))
        .unwrap_or("any")
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchTaskResponse, Status>> + Send>>;

#[tonic::async_trait]
impl TaskService for TaskServiceImpl {
    #[tracing::instrument(level = "debug", skip_all, fields(task_name = %request.get_ref().task_name))]
    async fn submit_task(
        &self,
        request: Request<SubmitTaskRequest>,
    ) -> Result<Response<SubmitTaskResponse>, Status> {
        let trace = traceparent(&request);
        let req = request.into_inner();
        let task = self
            .new_task(&req, trace.as_deref(), "")
            .map_err(|v| fail(ServiceError::invalid_many(v)))?;
        Ok(Response::new(
            self.submit_one(task, &req.task_name).await.map_err(fail)?,
        ))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(count = request.get_ref().tasks.len()))]
    async fn submit_tasks(
        &self,
        request: Request<SubmitTasksRequest>,
    ) -> Result<Response<SubmitTasksResponse>, Status> {
        let trace = traceparent(&request);
        let req = request.into_inner();
        if req.tasks.is_empty() {
            return Err(fail(ServiceError::invalid(
                "tasks",
                "at least one task is required",
            )));
        }
        if req.tasks.len() > self.limits.max_batch {
            return Err(fail(ServiceError::invalid(
                "tasks",
                format!("at most {} tasks per call", self.limits.max_batch),
            )));
        }
        let mut tasks = Vec::with_capacity(req.tasks.len());
        let mut violations = Vec::new();
        for (i, t) in req.tasks.iter().enumerate() {
            match self.new_task(t, trace.as_deref(), &format!("tasks[{i}].")) {
                Ok(task) => tasks.push(task),
                Err(v) => violations.extend(v),
            }
        }
        if !violations.is_empty() {
            return Err(fail(ServiceError::invalid_many(violations)));
        }
        let results = self
            .store
            .submit(&tasks)
            .await
            .map_err(|e| fail(e.into()))?;
        for (s, t) in results.iter().zip(&tasks) {
            if !s.duplicate {
                count_submitted(&t.name, &t.queue);
            }
        }
        Ok(Response::new(SubmitTasksResponse {
            results: results
                .into_iter()
                .zip(&req.tasks)
                .map(|(s, t)| SubmitTaskResponse {
                    message: format!("Task {} submitted successfully", t.task_name),
                    task_id: s.id,
                    status: "submitted".to_owned(),
                    state: proto_state(s.state) as i32,
                    duplicate: s.duplicate,
                })
                .collect(),
        }))
    }

    async fn get_task(
        &self,
        request: Request<GetTaskRequest>,
    ) -> Result<Response<GetTaskResponse>, Status> {
        let r = self
            .record(&request.get_ref().task_id)
            .await
            .map_err(fail)?;
        Ok(Response::new(GetTaskResponse {
            task: Some(proto_task(&r)),
        }))
    }

    async fn get_task_result(
        &self,
        request: Request<GetTaskResultRequest>,
    ) -> Result<Response<GetTaskResultResponse>, Status> {
        let r = self
            .record(&request.get_ref().task_id)
            .await
            .map_err(fail)?;
        Ok(Response::new(GetTaskResultResponse {
            task_id: r.id.clone(),
            state: proto_state(r.state) as i32,
            status: celery_status(&r).to_owned(),
            ready: r.state.is_terminal(),
            result: r
                .result
                .as_ref()
                .filter(|_| r.state == TaskState::Succeeded)
                .map(json::to_value),
            error: if r.state == TaskState::Succeeded {
                String::new()
            } else {
                r.error.clone().unwrap_or_default()
            },
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(task_id = %request.get_ref().task_id))]
    async fn cancel_task(
        &self,
        request: Request<CancelTaskRequest>,
    ) -> Result<Response<CancelTaskResponse>, Status> {
        let id = &request.get_ref().task_id;
        check_id(id).map_err(fail)?;
        let (state, message) = match self.store.cancel(id).await.map_err(|e| fail(e.into()))? {
            CancelOutcome::Cancelled => (
                TaskState::Cancelled,
                format!("Task {id} cancelled successfully"),
            ),
            CancelOutcome::Requested => (
                TaskState::Running,
                format!("Task {id} is running; cancellation requested"),
            ),
            CancelOutcome::AlreadyEnded(s) => {
                return Err(fail(ServiceError::FailedPrecondition(format!(
                    "task {id} already ended ({})",
                    s.as_str()
                ))));
            }
            CancelOutcome::NotFound => return Err(fail(ServiceError::NotFound(id.clone()))),
        };
        Ok(Response::new(CancelTaskResponse {
            task_id: id.clone(),
            state: proto_state(state) as i32,
            message,
        }))
    }

    async fn list_tasks(
        &self,
        request: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let req = request.into_inner();
        let mut violations = Vec::new();
        let states = states_for(&req.status).unwrap_or_else(|| {
            violations.push(FieldViolation::new(
                "status",
                "unknown status; use PENDING, STARTED, PROGRESS, RETRY, SUCCESS, FAILURE, REVOKED or a state name",
            ));
            Vec::new()
        });
        if req.limit > 1000 {
            violations.push(FieldViolation::new("limit", "must be at most 1000"));
        }
        let cursor = if req.page_token.is_empty() {
            None
        } else {
            let cursor = Cursor::new(req.page_token.clone());
            if !cursor.is_valid_for(req.dead_letter) {
                violations.push(FieldViolation::new(
                    "page_token",
                    "not a token returned by ListTasks",
                ));
            }
            Some(cursor)
        };
        if !violations.is_empty() {
            return Err(fail(ServiceError::invalid_many(violations)));
        }
        let filter = ListFilter {
            states,
            queue: Some(req.queue).filter(|q| !q.is_empty()),
            name: Some(req.task_name).filter(|n| !n.is_empty()),
            dead_letter: req.dead_letter,
        };
        let limit = if req.limit == 0 {
            100
        } else {
            req.limit as usize
        };
        let page = self
            .store
            .list(&filter, limit, cursor)
            .await
            .map_err(|e| fail(e.into()))?;
        Ok(Response::new(ListTasksResponse {
            total: page.tasks.len() as u32,
            tasks: page.tasks.iter().map(proto_task).collect(),
            next_page_token: page.next.map(|c| c.token().to_owned()).unwrap_or_default(),
        }))
    }

    type WatchTaskStream = WatchStream;

    async fn watch_task(
        &self,
        request: Request<WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        let id = request.into_inner().task_id;
        check_id(&id).map_err(fail)?;
        // Subscribe first, then read: a change between the two is seen as an event, never lost.
        let mut watch = self
            .hub
            .watch(&id)
            .await
            .map_err(|e| fail(redline_taskqueue::StoreError::from(e).into()))?;
        let first = self.record(&id).await.map_err(fail)?;
        let store = self.store.clone();
        let shutdown = self.shutdown.clone();
        let stream = async_stream(move |tx| async move {
            let mut last = first;
            if tx
                .send(Ok(WatchTaskResponse {
                    task: Some(proto_task(&last)),
                }))
                .await
                .is_err()
            {
                return;
            }
            while !last.state.is_terminal() {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        let _ = tx.send(Err(fail(ServiceError::ShuttingDown))).await;
                        return;
                    }
                    // The client went away: stop reading Redis for it now, not at the next change.
                    () = tx.closed() => return,
                    _ = watch.changes.recv() => {}
                    // A safety net for events missed while the subscription reconnects.
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                match store.get(&id).await {
                    Ok(Some(r)) if r != last => {
                        last = r;
                        if tx
                            .send(Ok(WatchTaskResponse {
                                task: Some(proto_task(&last)),
                            }))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        let _ = tx.send(Err(fail(ServiceError::Expired(id)))).await;
                        return;
                    }
                    Err(e) if e.is_unavailable() => {}
                    Err(e) => {
                        let _ = tx.send(Err(fail(e.into()))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_queue_stats(
        &self,
        _: Request<GetQueueStatsRequest>,
    ) -> Result<Response<GetQueueStatsResponse>, Status> {
        let s = self.store.stats().await.map_err(|e| fail(e.into()))?;
        Ok(Response::new(GetQueueStatsResponse {
            active_tasks: s.queues.iter().map(|q| q.running).sum(),
            scheduled_tasks: s.queues.iter().map(|q| q.scheduled).sum(),
            reserved_tasks: s.queues.iter().map(|q| q.queued).sum(),
            registered_tasks: self.catalog().specs().len() as u64,
            workers: s.workers,
            dead_letter_tasks: s.dead_letter,
            stale_completions: s.stale_completions,
            queues: s
                .queues
                .iter()
                .map(|q| QueueStats {
                    queue: q.queue.clone(),
                    queued: q.queued,
                    scheduled: q.scheduled,
                    running: q.running,
                    succeeded: q.succeeded,
                    failed: q.failed,
                    cancelled: q.cancelled,
                    retried: q.retried,
                    recovered: q.recovered,
                    oldest_queued_age: Some(proto_duration(
                        q.oldest_queued_age.unwrap_or_default(),
                    )),
                })
                .collect(),
        }))
    }

    async fn list_workers(
        &self,
        _: Request<ListWorkersRequest>,
    ) -> Result<Response<ListWorkersResponse>, Status> {
        let workers = self.store.workers().await.map_err(|e| fail(e.into()))?;
        Ok(Response::new(ListWorkersResponse {
            workers: workers
                .into_iter()
                .map(|w| Worker {
                    worker_id: w.id,
                    hostname: w.hostname,
                    queues: w.queues,
                    concurrency: w.concurrency,
                    active_task_ids: w.active,
                    started_at: Some(json::timestamp_ms(w.started_ms)),
                    last_heartbeat: Some(json::timestamp_ms(w.last_heartbeat_ms)),
                    processed: w.processed,
                    failed: w.failed,
                    pid: w.pid,
                    version: w.version,
                })
                .collect(),
        }))
    }

    async fn list_task_types(
        &self,
        _: Request<ListTaskTypesRequest>,
    ) -> Result<Response<ListTaskTypesResponse>, Status> {
        let mut types: Vec<TaskType> = self.catalog().specs().iter().map(spec_to_proto).collect();
        types.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(ListTaskTypesResponse { task_types: types }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(task_id = %request.get_ref().task_id))]
    async fn retry_task(
        &self,
        request: Request<RetryTaskRequest>,
    ) -> Result<Response<RetryTaskResponse>, Status> {
        let id = &request.get_ref().task_id;
        check_id(id).map_err(fail)?;
        match self.store.retry(id).await.map_err(|e| fail(e.into()))? {
            RetryOutcome::Requeued => Ok(Response::new(RetryTaskResponse {
                task_id: id.clone(),
                state: proto_state(TaskState::Queued) as i32,
            })),
            RetryOutcome::NotRetryable(s) => Err(fail(ServiceError::FailedPrecondition(format!(
                "task {id} is {}; only failed or cancelled tasks can be retried",
                s.as_str()
            )))),
            RetryOutcome::NotFound => Err(fail(ServiceError::NotFound(id.clone()))),
        }
    }

    async fn cleanup_tasks(
        &self,
        request: Request<CleanupTasksRequest>,
    ) -> Result<Response<CleanupTasksResponse>, Status> {
        let days = request.get_ref().days.unwrap_or(7);
        if days > 36_500 {
            return Err(fail(ServiceError::invalid("days", "must be at most 36500")));
        }
        let deleted = self
            .store
            .cleanup(Duration::from_secs(u64::from(days) * 86_400))
            .await
            .map_err(|e| fail(e.into()))?;
        Ok(Response::new(CleanupTasksResponse {
            deleted,
            message: format!("Cleaned up tasks older than {days} days"),
        }))
    }
}

/// A stream fed by a task writing into a bounded channel.
fn async_stream<F, Fut>(f: F) -> impl Stream<Item = Result<WatchTaskResponse, Status>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<WatchTaskResponse, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
