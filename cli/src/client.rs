//! Client commands: a thin TaskService client for operators and scripts.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use redline_proto::json;
use redline_proto::tasks::task_service_client::TaskServiceClient;
use redline_proto::tasks::*;
use serde_json::{Map, Value, json};
use tonic::transport::Channel;

/// Where TaskService is.
#[derive(Debug, Clone, Args)]
pub struct Endpoint {
    /// TaskService URL (give it before the subcommand, or set REDLINE_TASKS_URL).
    #[arg(
        long,
        env = "REDLINE_TASKS_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub tasks_url: String,
}

impl Endpoint {
    /// A connected client.
    pub async fn connect(&self) -> anyhow::Result<TaskServiceClient<Channel>> {
        let channel = Channel::from_shared(self.tasks_url.clone())
            .context("invalid --tasks-url")?
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .with_context(|| {
                format!(
                    "cannot reach TaskService at {} (is `redline up` running?)",
                    self.tasks_url
                )
            })?;
        Ok(TaskServiceClient::new(channel))
    }
}

/// `redline submit`.
#[derive(Debug, Clone, Args)]
pub struct SubmitArgs {
    /// Task name, short (`process_data_conversion`) or long (`redline.background.tasks.process_data_conversion`).
    pub name: String,
    /// Keyword arguments as a JSON object.
    #[arg(long, default_value = "{}")]
    pub kwargs: String,
    /// Positional arguments as a JSON array.
    #[arg(long, default_value = "[]")]
    pub args: String,
    /// Queue [default: redline_tasks].
    #[arg(long)]
    pub queue: Option<String>,
    /// Priority 0-9 (9 most urgent) [default: 5].
    #[arg(long)]
    pub priority: Option<u32>,
    /// Run no earlier than this many seconds from now.
    #[arg(long)]
    pub countdown: Option<f64>,
    /// Idempotency key: resubmitting with it returns the original task.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Wait for the task to end and print its result.
    #[arg(long)]
    pub wait: bool,
}

/// `redline inspect` subjects (the `celery inspect` equivalents).
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum Inspect {
    /// Live workers and their last heartbeat.
    Ping,
    /// Tasks running now, per worker.
    Active,
    /// Registered task types and their arguments.
    Registered,
    /// Queue counts and worker counters.
    Stats,
}

fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// A timestamp as RFC 3339 UTC, or null.
fn ts(t: &Option<prost_types::Timestamp>) -> Value {
    t.as_ref().map_or(Value::Null, |t| json!(t.to_string()))
}

/// A task as the REST API shows it (the gateway's rendering), with what an operator also wants: the attempt
/// and the worker holding it.
pub fn task_json(t: &Task) -> Value {
    let mut v = redline_gateway::routes::task_json(t);
    v["attempt"] = json!(t.attempt);
    if !t.worker_id.is_empty() {
        v["worker_id"] = json!(t.worker_id);
    }
    v
}

/// `redline submit`.
pub async fn submit(ep: &Endpoint, a: SubmitArgs) -> anyhow::Result<()> {
    let kwargs: Value =
        serde_json::from_str(&a.kwargs).context("--kwargs must be a JSON object")?;
    if !kwargs.is_object() {
        bail!("--kwargs must be a JSON object");
    }
    let args: Value = serde_json::from_str(&a.args).context("--args must be a JSON array")?;
    if !args.is_array() {
        bail!("--args must be a JSON array");
    }
    let mut client = ep.connect().await?;
    let resp = client
        .submit_task(SubmitTaskRequest {
            task_name: a.name,
            args: Some(json::to_list(args.as_array().map_or(&[], Vec::as_slice))),
            kwargs: Some(json::to_struct(kwargs.as_object().unwrap_or(&Map::new()))),
            queue: a.queue.unwrap_or_default(),
            priority: a.priority,
            countdown: a
                .countdown
                .and_then(|s| Duration::try_from_secs_f64(s.max(0.0)).ok())
                .and_then(|d| prost_types::Duration::try_from(d).ok()),
            idempotency_key: a.idempotency_key.unwrap_or_default(),
            ..Default::default()
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if !a.wait {
        print(
            &json!({"task_id": resp.task_id, "status": resp.status, "message": resp.message, "duplicate": resp.duplicate}),
        );
        return Ok(());
    }
    let last = watch_until_done(&mut client, &resp.task_id, false).await?;
    print(&task_json(&last));
    if last.state == TaskState::Succeeded as i32 {
        Ok(())
    } else {
        bail!("task ended {}", last.status)
    }
}

async fn watch_until_done(
    client: &mut TaskServiceClient<Channel>,
    id: &str,
    show: bool,
) -> anyhow::Result<Task> {
    let mut stream = client
        .watch_task(WatchTaskRequest {
            task_id: id.to_owned(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut last = None;
    while let Some(msg) = stream.message().await.map_err(status_error)? {
        if let Some(t) = msg.task {
            if show {
                let p = t
                    .progress
                    .as_ref()
                    .map(|p| format!(" {} {:.0}%", p.step, p.progress))
                    .unwrap_or_default();
                eprintln!("{} {}{p}", t.status, t.task_id);
            }
            last = Some(t);
        }
    }
    last.context("the stream ended without a task")
}

/// `redline status ID`.
pub async fn status(ep: &Endpoint, id: &str) -> anyhow::Result<()> {
    let t = ep
        .connect()
        .await?
        .get_task(GetTaskRequest {
            task_id: id.to_owned(),
        })
        .await
        .map_err(status_error)?;
    print(&task_json(&t.into_inner().task.unwrap_or_default()));
    Ok(())
}

/// `redline watch ID`.
pub async fn watch(ep: &Endpoint, id: &str) -> anyhow::Result<()> {
    let mut client = ep.connect().await?;
    let last = watch_until_done(&mut client, id, true).await?;
    print(&task_json(&last));
    Ok(())
}

/// `redline cancel ID`.
pub async fn cancel(ep: &Endpoint, id: &str) -> anyhow::Result<()> {
    let r = ep
        .connect()
        .await?
        .cancel_task(CancelTaskRequest {
            task_id: id.to_owned(),
        })
        .await
        .map_err(status_error)?;
    print(&json!({"message": r.into_inner().message}));
    Ok(())
}

/// `redline retry ID`.
pub async fn retry(ep: &Endpoint, id: &str) -> anyhow::Result<()> {
    ep.connect()
        .await?
        .retry_task(RetryTaskRequest {
            task_id: id.to_owned(),
        })
        .await
        .map_err(status_error)?;
    print(&json!({"task_id": id, "status": "PENDING"}));
    Ok(())
}

/// `redline list`.
pub async fn list(
    ep: &Endpoint,
    status: Option<String>,
    limit: u32,
    dead_letter: bool,
) -> anyhow::Result<()> {
    let r = ep
        .connect()
        .await?
        .list_tasks(ListTasksRequest {
            status: status.clone().unwrap_or_default(),
            limit,
            dead_letter,
            ..Default::default()
        })
        .await
        .map_err(status_error)?
        .into_inner();
    print(
        &json!({"tasks": r.tasks.iter().map(task_json).collect::<Vec<_>>(), "total": r.total, "filter": status}),
    );
    Ok(())
}

/// `redline inspect`.
pub async fn inspect(ep: &Endpoint, what: Inspect) -> anyhow::Result<()> {
    let mut c = ep.connect().await?;
    match what {
        Inspect::Ping | Inspect::Active => {
            let workers = c
                .list_workers(ListWorkersRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .workers;
            let v: Vec<Value> = workers
                .iter()
                .map(|w| {
                    if matches!(what, Inspect::Ping) {
                        json!({"worker": w.worker_id, "hostname": w.hostname, "last_heartbeat": ts(&w.last_heartbeat), "ok": "pong"})
                    } else {
                        json!({"worker": w.worker_id, "active": w.active_task_ids})
                    }
                })
                .collect();
            if v.is_empty() {
                eprintln!("no workers alive");
            }
            print(&json!(v));
        }
        Inspect::Registered => {
            let types = c
                .list_task_types(ListTaskTypesRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .task_types;
            let v: Vec<Value> = types
                .iter()
                .map(|t| {
                    json!({
                        "name": t.name,
                        "aliases": t.aliases,
                        "description": t.description,
                        "arguments": t.arguments.iter().map(|a| json!({"name": a.name, "type": a.r#type, "required": a.required, "allowed_values": a.allowed_values})).collect::<Vec<_>>(),
                    })
                })
                .collect();
            print(&json!(v));
        }
        Inspect::Stats => {
            let s = c
                .get_queue_stats(GetQueueStatsRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            let workers = c
                .list_workers(ListWorkersRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .workers;
            print(&json!({
                "active_tasks": s.active_tasks,
                "scheduled_tasks": s.scheduled_tasks,
                "reserved_tasks": s.reserved_tasks,
                "registered_tasks": s.registered_tasks,
                "dead_letter_tasks": s.dead_letter_tasks,
                "stale_completions": s.stale_completions,
                "queues": s.queues.iter().map(|q| json!({
                    "queue": q.queue, "queued": q.queued, "scheduled": q.scheduled, "running": q.running,
                    "succeeded": q.succeeded, "failed": q.failed, "cancelled": q.cancelled, "retried": q.retried,
                    "recovered": q.recovered,
                    "oldest_queued_age_s": q.oldest_queued_age.as_ref().map(|d| d.seconds as f64 + f64::from(d.nanos) / 1e9),
                })).collect::<Vec<_>>(),
                "workers": workers.iter().map(|w| json!({
                    "worker": w.worker_id, "concurrency": w.concurrency, "active": w.active_task_ids.len(),
                    "processed": w.processed, "failed": w.failed, "pid": w.pid, "started_at": ts(&w.started_at),
                })).collect::<Vec<_>>(),
            }));
        }
    }
    Ok(())
}

/// A gRPC status as a readable error.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    use tonic_types::StatusExt;
    match s.get_details_bad_request() {
        Some(bad) if !bad.field_violations.is_empty() => {
            let lines: Vec<String> = bad
                .field_violations
                .iter()
                .map(|v| format!("  {}: {}", v.field, v.description))
                .collect();
            anyhow::anyhow!("{:?}:\n{}", s.code(), lines.join("\n"))
        }
        _ => anyhow::anyhow!("{:?}: {}", s.code(), s.message()),
    }
}
