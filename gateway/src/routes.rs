//! The REST surface: the original REDLINE /tasks routes, translated into TaskService calls.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use futures::StreamExt;
use redline_catalog::{Catalog, TaskSpec};
use redline_proto::tasks as pb;
use serde_json::{Map, Value, json};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::AppState;
use crate::error::ApiError;
use redline_proto::json::{from_list, from_struct, from_value, number, to_list, to_struct};

/// A timestamp as ISO 8601 UTC (RFC 3339 with `Z`), prost-types' own rendering.
fn timestamp(t: &prost_types::Timestamp) -> Value {
    Value::String(t.to_string())
}

/// One served route.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// HTTP method, upper case.
    pub method: &'static str,
    /// Path template in the `google.api.http` syntax (which axum 0.8 shares).
    pub path: &'static str,
    /// The TaskService RPC behind it, when it is one RPC's `google.api.http` rule.
    pub rpc: Option<&'static str>,
    /// One line for the OpenAPI document.
    pub summary: &'static str,
    /// The task type it submits, for the original's per-task routes.
    pub submits: Option<TaskRoute>,
}

/// A route of the original that submits one task type: its body's fields are the task's keyword arguments,
/// declared in the catalogue, which also gives their required fields and the route's request schema.
#[derive(Debug, Clone, Copy)]
pub struct TaskRoute {
    /// Catalogue name of the task type.
    pub task: &'static str,
    /// The success message, as the original wrote it.
    pub message: fn(&Map<String, Value>) -> String,
    /// Body fields the original accepted under another name: `(old name, argument)`. The old name is used only
    /// when the argument is absent; giving both is refused.
    pub renamed: &'static [(&'static str, &'static str)],
}

impl Route {
    /// `"METHOD /path"`, the name used in per-route limits and rate-limit keys.
    pub fn key(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// The declaration of the task type this route submits.
    pub fn task_spec(&self) -> Option<&'static TaskSpec> {
        self.submits.and_then(|t| catalog().resolve(t.task))
    }
}

/// The task types this build declares, which the per-task routes and the OpenAPI document are derived from.
pub fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(redline_catalog::builtin)
}

const fn route(
    method: &'static str,
    path: &'static str,
    rpc: Option<&'static str>,
    summary: &'static str,
) -> Route {
    Route {
        method,
        path,
        rpc,
        summary,
        submits: None,
    }
}

const fn submits(
    path: &'static str,
    summary: &'static str,
    task: &'static str,
    message: fn(&Map<String, Value>) -> String,
    renamed: &'static [(&'static str, &'static str)],
) -> Route {
    Route {
        method: "POST",
        path,
        rpc: None,
        summary,
        submits: Some(TaskRoute {
            task,
            message,
            renamed,
        }),
    }
}

/// Every /tasks route, in the original's order.
pub const ROUTES: &[Route] = &[
    route(
        "POST",
        "/tasks/submit",
        Some("SubmitTask"),
        "Submit a task by name",
    ),
    submits(
        "/tasks/convert",
        "Submit a data conversion task",
        "process_data_conversion",
        |_| "Data conversion task submitted successfully".to_owned(),
        &[],
    ),
    submits(
        "/tasks/download",
        "Submit a data download task",
        "process_data_download",
        |_| "Data download task submitted successfully".to_owned(),
        &[],
    ),
    // The original forwarded `parameters`, which its task did not accept; `options` is the task's argument,
    // and `parameters` is still honoured as its old name.
    submits(
        "/tasks/analyze",
        "Submit a data analysis task",
        "process_data_analysis",
        |_| "Data analysis task submitted successfully".to_owned(),
        &[("parameters", "options")],
    ),
    submits(
        "/tasks/upload",
        "Submit a file upload task",
        "process_file_upload",
        |_| "File upload task submitted successfully".to_owned(),
        &[],
    ),
    submits(
        "/tasks/bulk",
        "Submit a bulk operations task",
        "process_bulk_operations",
        |body| {
            let n = body["operations"].as_array().map_or(0, Vec::len);
            format!("Bulk operations task submitted successfully ({n} operations)")
        },
        &[],
    ),
    route(
        "GET",
        "/tasks/status/{task_id}",
        Some("GetTask"),
        "A task's record",
    ),
    route(
        "GET",
        "/tasks/result/{task_id}",
        Some("GetTaskResult"),
        "A task's result",
    ),
    route(
        "POST",
        "/tasks/cancel/{task_id}",
        Some("CancelTask"),
        "Cancel a task",
    ),
    route(
        "GET",
        "/tasks/list",
        Some("ListTasks"),
        "List tasks, newest first",
    ),
    route(
        "GET",
        "/tasks/queue/stats",
        Some("GetQueueStats"),
        "Task counts per state",
    ),
    route("GET", "/tasks/health", None, "Task processing health"),
    route(
        "POST",
        "/tasks/cleanup",
        Some("CleanupTasks"),
        "Delete old finished tasks",
    ),
];

/// The handler of a route in [`ROUTES`].
pub fn handler(r: &'static Route) -> Option<MethodRouter<AppState>> {
    if let Some(task) = r.submits {
        return Some(post(
            move |State(state): State<AppState>, headers: HeaderMap, body: Body| {
                submit_route(state, headers, body, task)
            },
        ));
    }
    Some(match (r.method, r.path) {
        ("POST", "/tasks/submit") => post(submit),
        ("GET", "/tasks/status/{task_id}") => get(status),
        ("GET", "/tasks/result/{task_id}") => get(result),
        ("POST", "/tasks/cancel/{task_id}") => post(cancel),
        ("GET", "/tasks/list") => get(list),
        ("GET", "/tasks/queue/stats") => get(queue_stats),
        ("GET", "/tasks/health") => get(tasks_health),
        ("POST", "/tasks/cleanup") => post(cleanup),
        _ => return None,
    })
}

type ApiResult = Result<Response, ApiError>;

// === request bodies ===

fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Most bytes of an oversized body read and discarded before answering 413.
const DRAIN_LIMIT: usize = 16 << 20;
/// Longest time spent discarding an oversized body.
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Reads a body of at most `max` bytes.
///
/// An oversized body is still read to its end (up to [`DRAIN_LIMIT`] and [`DRAIN_TIME`]) before the 413 goes
/// out. Closing the connection with the client's bytes unread makes the kernel answer with a reset, and a
/// client still sending would see "connection reset" instead of the 413 and its JSON body.
async fn read_body(body: Body, max: usize) -> Result<Bytes, ApiError> {
    let unreadable = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            tonic::Code::InvalidArgument,
            "Request body could not be read",
        )
    };
    let mut body = body.into_data_stream();
    let mut kept = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|_| unreadable())?;
        if kept.len() + chunk.len() > max {
            let mut seen = kept.len() + chunk.len();
            let drain = async {
                while seen <= DRAIN_LIMIT {
                    match body.next().await {
                        Some(Ok(chunk)) => seen += chunk.len(),
                        _ => break,
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                tonic::Code::InvalidArgument,
                format!("Request body is larger than {max} bytes"),
            ));
        }
        kept.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(kept))
}

/// Reads a JSON object body. An empty body without a content type is `{}` (the optional-body routes); any
/// other content type is 415; bytes that are not a JSON object are 400; more than the limit is 413.
async fn json_object(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Map<String, Value>, ApiError> {
    let bytes = read_body(body, state.config.max_body).await?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or(""));
    match content_type {
        Some(ct) if !is_json(ct) => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                tonic::Code::InvalidArgument,
                "Content-Type must be application/json",
            ));
        }
        None if !bytes.is_empty() => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                tonic::Code::InvalidArgument,
                "Content-Type must be application/json",
            ));
        }
        _ => {}
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(ApiError::bad_request("Request body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!(
            "Request body is not valid JSON: {e}"
        ))),
    }
}

/// Python truthiness of a required field: missing, null, "", [], {}, 0 and false all count as missing, as the
/// original's `if not data.get(field)`.
fn present(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
    }
}

/// A whole number, also from a JSON double with no fractional part (`5.0`), which JSON Schema counts as an
/// integer (and clients generated from the schema may send).
pub fn whole(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 9.007_199_254_740_992e15)
            .map(|f| f as u64)
    })
}

fn priority(body: &Map<String, Value>) -> Result<Option<u32>, ApiError> {
    match body.get("priority") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => whole(v)
            .filter(|p| *p <= 9)
            .and_then(|p| u32::try_from(p).ok())
            .map(Some)
            .ok_or_else(|| ApiError::bad_request("priority must be an integer from 0 to 9")),
    }
}

/// Whether a required argument's schema asks for a non-empty list.
pub fn is_list(schema: &Value) -> bool {
    redline_catalog::spec::json_types(schema).is_some_and(|t| t.contains(&"array"))
}

/// The keyword arguments of a per-task route: the body's fields the task declares (under their old names when
/// the route renamed them), after the original's checks of the required ones, in declared order, with its
/// messages (`<field> is required`, `<field> must be a non-empty list`).
fn route_kwargs(
    route: &TaskRoute,
    spec: &TaskSpec,
    body: &Map<String, Value>,
) -> Result<Map<String, Value>, ApiError> {
    let mut kwargs = Map::new();
    for (name, schema) in spec.arguments() {
        let mut value = body.get(name);
        for (old, new) in route.renamed {
            if *new == name && body.contains_key(*old) {
                if value.is_some() {
                    return Err(ApiError::bad_request(format!(
                        "give {name} or its old name {old}, not both"
                    )));
                }
                value = body.get(*old);
            }
        }
        if spec.is_required(name) {
            if is_list(schema) {
                match value {
                    None | Some(Value::Null) => {
                        return Err(ApiError::bad_request(format!("{name} is required")));
                    }
                    Some(Value::Array(a)) if !a.is_empty() => {}
                    Some(_) => {
                        return Err(ApiError::bad_request(format!(
                            "{name} must be a non-empty list"
                        )));
                    }
                }
            } else if !present(value) {
                return Err(ApiError::bad_request(format!("{name} is required")));
            }
        }
        if let Some(v) = value {
            kwargs.insert(name.to_owned(), v.clone());
        }
    }
    Ok(kwargs)
}

// === TaskService calls ===

fn call<T>(state: &AppState, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(state.config.grpc_timeout);
    if let Ok(Ok(v)) = crate::TRACEPARENT.try_with(|t| t.parse()) {
        r.metadata_mut().insert("traceparent", v);
    }
    r
}

async fn submit_task(
    state: &AppState,
    task_name: &str,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
    queue: String,
    priority: Option<u32>,
    message: String,
) -> ApiResult {
    let mut tasks = state.tasks();
    let resp = tasks
        .submit_task(call(
            state,
            pb::SubmitTaskRequest {
                task_name: task_name.to_owned(),
                args: Some(to_list(&args)),
                kwargs: Some(to_struct(&kwargs)),
                queue,
                priority,
                ..Default::default()
            },
        ))
        .await?
        .into_inner();
    Ok(
        Json(json!({"task_id": resp.task_id, "status": "submitted", "message": message}))
            .into_response(),
    )
}

// === handlers ===

async fn submit(State(state): State<AppState>, headers: HeaderMap, body: Body) -> ApiResult {
    let body = json_object(&state, &headers, body).await?;
    let task_name = match body.get("task_name") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(v) if present(Some(v)) => {
            return Err(ApiError::bad_request("task_name must be a string"));
        }
        _ => return Err(ApiError::bad_request("task_name is required")),
    };
    let args = match body.get("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err(ApiError::bad_request("args must be a list")),
    };
    let kwargs = match body.get("kwargs") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(o)) => o.clone(),
        Some(_) => return Err(ApiError::bad_request("kwargs must be an object")),
    };
    let queue = match body.get("queue") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(ApiError::bad_request("queue must be a string")),
    };
    let priority = priority(&body)?;
    let message = format!("Task {task_name} submitted successfully");
    submit_task(&state, &task_name, args, kwargs, queue, priority, message).await
}

/// A per-task route: the body's fields become the task's keyword arguments; TaskService validates them
/// against the same declaration.
async fn submit_route(
    state: AppState,
    headers: HeaderMap,
    body: Body,
    route: TaskRoute,
) -> ApiResult {
    let body = json_object(&state, &headers, body).await?;
    let spec = catalog().resolve(route.task).ok_or_else(|| {
        ApiError::unavailable(format!("task type {} is not declared", route.task))
    })?;
    let kwargs = route_kwargs(&route, spec, &body)?;
    let p = priority(&body)?;
    submit_task(
        &state,
        route.task,
        Vec::new(),
        kwargs,
        String::new(),
        p,
        (route.message)(&body),
    )
    .await
}

/// `TASK_STATE_QUEUED` → `queued`.
fn state_name(state: i32) -> String {
    pb::TaskState::try_from(state)
        .map_or("unspecified", |s| s.as_str_name())
        .trim_start_matches("TASK_STATE_")
        .to_ascii_lowercase()
}

/// The original task record, plus `state` (the finer lifecycle state) and `started_at`.
pub fn task_json(t: &pb::Task) -> Value {
    let mut m = Map::new();
    m.insert("task_id".into(), json!(t.task_id));
    m.insert("task_name".into(), json!(t.task_name));
    m.insert("args".into(), t.args.as_ref().map_or(json!([]), from_list));
    m.insert(
        "kwargs".into(),
        t.kwargs.as_ref().map_or(json!({}), from_struct),
    );
    m.insert("status".into(), json!(t.status));
    m.insert("state".into(), json!(state_name(t.state)));
    m.insert("queue".into(), json!(t.queue));
    m.insert("priority".into(), json!(t.priority));
    if let Some(ts) = &t.submitted_at {
        m.insert("submitted_at".into(), timestamp(ts));
    }
    if let Some(ts) = &t.started_at {
        m.insert("started_at".into(), timestamp(ts));
    }
    if let Some(ts) = &t.completed_at {
        m.insert("completed_at".into(), timestamp(ts));
    }
    if let Some(p) = &t.progress {
        let mut meta = match p.details.as_ref().map(from_struct) {
            Some(Value::Object(o)) => o,
            _ => Map::new(),
        };
        meta.insert("step".into(), json!(p.step));
        meta.insert("progress".into(), number(p.progress));
        m.insert("progress".into(), Value::Object(meta));
    }
    if let Some(r) = &t.result {
        m.insert("result".into(), from_value(r));
    }
    if !t.error.is_empty() {
        m.insert("error".into(), json!(t.error));
    }
    Value::Object(m)
}

async fn status(State(state): State<AppState>, Path(task_id): Path<String>) -> ApiResult {
    let mut tasks = state.tasks();
    let resp = tasks
        .get_task(call(&state, pb::GetTaskRequest { task_id }))
        .await?
        .into_inner();
    let task = resp.task.ok_or_else(ApiError::task_not_found)?;
    Ok(Json(task_json(&task)).into_response())
}

/// `{"result": ...}` as the original; a failed or cancelled task adds `status` and `error` beside a null
/// result instead of the original's 500.
async fn result(State(state): State<AppState>, Path(task_id): Path<String>) -> ApiResult {
    let mut tasks = state.tasks();
    let r = tasks
        .get_task_result(call(&state, pb::GetTaskResultRequest { task_id }))
        .await?
        .into_inner();
    let failed = matches!(
        pb::TaskState::try_from(r.state),
        Ok(pb::TaskState::Failed | pb::TaskState::Cancelled)
    );
    if failed {
        return Ok(
            Json(json!({"result": null, "status": r.status, "error": r.error})).into_response(),
        );
    }
    let value = if r.ready && r.status == "SUCCESS" {
        r.result.as_ref().map_or(Value::Null, from_value)
    } else {
        Value::Null
    };
    Ok(Json(json!({ "result": value })).into_response())
}

async fn cancel(State(state): State<AppState>, Path(task_id): Path<String>) -> ApiResult {
    let mut tasks = state.tasks();
    tasks
        .cancel_task(call(
            &state,
            pb::CancelTaskRequest {
                task_id: task_id.clone(),
            },
        ))
        .await?;
    Ok(Json(json!({"message": format!("Task {task_id} cancelled successfully")})).into_response())
}

async fn list(
    State(state): State<AppState>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(query) =
        query.map_err(|e| ApiError::bad_request(format!("Invalid query string: {e}")))?;
    let limit = match query.get("limit").map(|l| l.trim()) {
        None | Some("") => 100,
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::bad_request("limit must be an integer from 1 to 1000"))?,
    };
    let filter = query.get("status").filter(|s| !s.is_empty()).cloned();
    let mut tasks = state.tasks();
    let r = tasks
        .list_tasks(call(
            &state,
            pb::ListTasksRequest {
                status: filter.clone().unwrap_or_default(),
                limit,
                ..Default::default()
            },
        ))
        .await?
        .into_inner();
    let items: Vec<Value> = r.tasks.iter().map(task_json).collect();
    Ok(Json(json!({"tasks": items, "total": items.len(), "filter": filter})).into_response())
}

fn worker_stats(workers: &[pb::Worker]) -> Value {
    let m: Map<String, Value> = workers
        .iter()
        .map(|w| {
            let mut v = json!({
                "hostname": w.hostname,
                "queues": w.queues,
                "concurrency": w.concurrency,
                "active": w.active_task_ids.len(),
                "processed": w.processed,
                "failed": w.failed,
                "pid": w.pid,
                "version": w.version,
            });
            if let (Some(ts), Value::Object(o)) = (&w.last_heartbeat, &mut v) {
                o.insert("last_heartbeat".into(), timestamp(ts));
            }
            (w.worker_id.clone(), v)
        })
        .collect();
    Value::Object(m)
}

/// Counts of tasks (not of replying workers, as the original).
fn stats_json(s: &pb::GetQueueStatsResponse, workers: &[pb::Worker]) -> Value {
    json!({
        "active_tasks": s.active_tasks,
        "scheduled_tasks": s.scheduled_tasks,
        "reserved_tasks": s.reserved_tasks,
        "registered_tasks": s.registered_tasks,
        "worker_stats": worker_stats(workers),
    })
}

async fn stats_and_workers(
    state: &AppState,
) -> Result<(pb::GetQueueStatsResponse, Vec<pb::Worker>), tonic::Status> {
    let mut a = state.tasks();
    let mut b = state.tasks();
    let (s, w) = tokio::join!(
        a.get_queue_stats(call(state, pb::GetQueueStatsRequest {})),
        b.list_workers(call(state, pb::ListWorkersRequest {})),
    );
    Ok((s?.into_inner(), w?.into_inner().workers))
}

async fn queue_stats(State(state): State<AppState>) -> ApiResult {
    let (s, w) = stats_and_workers(&state).await?;
    Ok(Json(stats_json(&s, &w)).into_response())
}

/// TaskService's readiness (which follows its Redis). `Err` when TaskService cannot be reached.
pub async fn tasks_ready(state: &AppState) -> Result<bool, tonic::Status> {
    let mut h = state.health();
    let r = h
        .check(call(
            state,
            HealthCheckRequest {
                service: "readiness".into(),
            },
        ))
        .await?;
    Ok(r.into_inner().status == ServingStatus::Serving as i32)
}

/// The original's health shape with real content: healthy only when TaskService reaches Redis and at least
/// one worker is alive; 503 otherwise, so probes and load balancers can act on it.
async fn tasks_health(State(state): State<AppState>) -> Response {
    let (ready, stats) = tokio::join!(tasks_ready(&state), stats_and_workers(&state));
    let available = ready.is_ok();
    // Readiness is probed periodically; a failing stats call shows an outage that began since.
    let connected = matches!(ready, Ok(true)) && stats.is_ok();
    let mut body = Map::new();
    body.insert("celery_available".into(), json!(available));
    body.insert("celery_connected".into(), json!(connected));
    let mut error = None;
    let mut workers = 0;
    match &stats {
        Ok((s, w)) => {
            workers = w.len();
            body.insert("queue_stats".into(), stats_json(s, w));
            let size: u64 = s
                .queues
                .iter()
                .map(|q| q.queued + q.scheduled + q.running + q.succeeded + q.failed + q.cancelled)
                .sum();
            body.insert("registry_size".into(), json!(size));
        }
        Err(e) => {
            body.insert("queue_stats".into(), json!({}));
            body.insert("registry_size".into(), json!(0));
            error = Some(e.message().to_owned());
        }
    }
    body.insert("workers".into(), json!(workers));
    let healthy = connected && workers > 0;
    if !healthy && error.is_none() {
        error = Some(if !available {
            "Task service not reachable".to_owned()
        } else if !connected {
            "Redis not reachable".to_owned()
        } else {
            "No worker alive".to_owned()
        });
    }
    if let Some(e) = error {
        body.insert("error".into(), json!(e));
    }
    body.insert(
        "status".into(),
        json!(if healthy { "healthy" } else { "unhealthy" }),
    );
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(Value::Object(body))).into_response()
}

async fn cleanup(State(state): State<AppState>, headers: HeaderMap, body: Body) -> ApiResult {
    let body = json_object(&state, &headers, body).await?;
    let days = match body.get("days") {
        None | Some(Value::Null) => 7,
        Some(v) => whole(v)
            .and_then(|d| u32::try_from(d).ok())
            .ok_or_else(|| ApiError::bad_request("days must be a non-negative integer"))?,
    };
    let mut tasks = state.tasks();
    tasks
        .cleanup_tasks(call(&state, pb::CleanupTasksRequest { days: Some(days) }))
        .await?;
    Ok(
        Json(json!({"message": format!("Cleaned up tasks older than {days} days")}))
            .into_response(),
    )
}

/// `/healthz`: the process is alive.
pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// `/readyz`: TaskService answers and is ready.
pub async fn readyz(State(state): State<AppState>) -> Response {
    if !state.serving.get() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "error": "shutting down"})),
        )
            .into_response();
    }
    match tasks_ready(&state).await {
        Ok(true) => Json(json!({"status": "ready"})).into_response(),
        Ok(false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "error": "Task service not ready"})),
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "error": e.message()})),
        )
            .into_response(),
    }
}

/// Any other path.
pub async fn not_found() -> Response {
    ApiError::new(StatusCode::NOT_FOUND, tonic::Code::NotFound, "Not found").into_response()
}
