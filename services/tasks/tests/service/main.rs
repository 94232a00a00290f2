//! TaskService end to end in one process: a real server on 127.0.0.1:0, a real worker, a private redis-server.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redline_proto::tasks::task_service_client::TaskServiceClient;
use redline_proto::tasks::*;
use redline_tasks::config::{Args, Config};
use redline_testkit::RedisServer;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
use tonic_types::StatusExt;

/// The suite of the test kit, with this file's shorthands.
struct Suite {
    kit: redline_testkit::Suite,
    client: TaskServiceClient<Channel>,
    health: HealthClient<Channel>,
}

async fn suite(with_worker: bool) -> Suite {
    suite_with(with_worker, None).await
}

async fn suite_with(with_worker: bool, shutdown_delay: Option<&str>) -> Suite {
    let mut tasks = vec!["--max-payload-bytes", "4096"];
    if let Some(delay) = shutdown_delay {
        tasks.extend(["--shutdown-delay", delay]);
    }
    let kit = redline_testkit::Suite::builder()
        .tasks(&tasks)
        .workers(usize::from(with_worker))
        .worker(&["--cancel-grace", "200ms"])
        .start()
        .await;
    Suite {
        client: kit.tasks(),
        health: kit.tasks_health(),
        kit,
    }
}

impl Suite {
    async fn readiness(&self) -> Option<i32> {
        let mut h = self.health.clone();
        h.check(HealthCheckRequest {
            service: "readiness".into(),
        })
        .await
        .ok()
        .map(|r| r.into_inner().status)
    }

    async fn wait_ready(&self, ready: bool, within: Duration) {
        let want = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        } as i32;
        let deadline = Instant::now() + within;
        while self.readiness().await != Some(want) {
            assert!(Instant::now() < deadline, "readiness never became {ready}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn submit(
        &self,
        name: &str,
        kwargs: serde_json::Value,
    ) -> Result<SubmitTaskResponse, tonic::Status> {
        self.client
            .clone()
            .submit_task(SubmitTaskRequest {
                task_name: name.into(),
                kwargs: Some(redline_proto::json::to_struct(
                    kwargs.as_object().expect("an object"),
                )),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    }

    async fn get(&self, id: &str) -> Result<Task, tonic::Status> {
        self.client
            .clone()
            .get_task(GetTaskRequest { task_id: id.into() })
            .await
            .map(|r| r.into_inner().task.unwrap_or_default())
    }
}

fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn submit_then_watch_streams_progress_until_success() {
    let s = suite(true).await;
    let sub = s
        .submit("redline.sleep", serde_json::json!({"seconds": 1.2}))
        .await
        .unwrap();
    assert_eq!((sub.status.as_str(), sub.duplicate), ("submitted", false));
    let mut stream = s
        .client
        .clone()
        .watch_task(WatchTaskRequest {
            task_id: sub.task_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut statuses = Vec::new();
    while let Some(msg) = stream.message().await.unwrap() {
        let task = msg.task.unwrap();
        statuses.push(task.status.clone());
        if task.state == TaskState::Succeeded as i32 {
            assert_eq!(
                redline_proto::json::from_value(task.result.as_ref().unwrap()),
                serde_json::json!({"slept": 1.2})
            );
            assert!(task.completed_at.is_some() && task.started_at.is_some());
        }
    }
    assert_eq!(statuses.last().map(String::as_str), Some("SUCCESS"));
    assert!(statuses.iter().any(|s| s == "PROGRESS"), "{statuses:?}");
}

#[tokio::test]
async fn bad_input_is_invalid_argument_with_field_details() {
    let s = suite(false).await;
    let err = s
        .submit("process_everything", serde_json::json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let v = violations(&err);
    assert_eq!(v[0].0, "task_name");
    assert!(
        v[0].1.contains("redline.noop"),
        "names the registered types: {}",
        v[0].1
    );

    let err = s
        .submit(
            "redline.sleep",
            serde_json::json!({"seconds": "long", "extra": 1}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields: Vec<String> = violations(&err).into_iter().map(|(f, _)| f).collect();
    assert_eq!(fields, ["kwargs.extra", "kwargs.seconds"]);

    let err = s
        .submit("redline.sleep", serde_json::json!({}))
        .await
        .unwrap_err();
    assert_eq!(
        violations(&err),
        [(
            "kwargs.seconds".to_owned(),
            "seconds is required".to_owned()
        )]
    );

    let big = "x".repeat(5000);
    let err = s
        .submit("redline.echo", serde_json::json!({ "blob": big }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("limit"), "{}", err.message());

    let mut c = s.client.clone();
    let err = c
        .submit_task(SubmitTaskRequest {
            task_name: "redline.noop".into(),
            priority: Some(12),
            queue: "bad queue".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let fields: Vec<String> = violations(&err).into_iter().map(|(f, _)| f).collect();
    assert_eq!(fields, ["queue", "priority"]);

    // A task due in the year 9000 would hold its memory in Redis for good.
    let err = c
        .submit_task(SubmitTaskRequest {
            task_name: "redline.noop".into(),
            eta: Some(prost_types::Timestamp {
                seconds: 221_845_392_000,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        violations(&err),
        [(
            "eta".to_owned(),
            "must be at most a year from now".to_owned()
        )]
    );

    let err = c
        .submit_tasks(SubmitTasksRequest {
            tasks: vec![
                SubmitTaskRequest {
                    task_name: "redline.noop".into(),
                    ..Default::default()
                },
                SubmitTaskRequest {
                    task_name: "nope".into(),
                    ..Default::default()
                },
            ],
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&err)[0].0, "tasks[1].task_name");
    // Nothing of the rejected batch was enqueued.
    let list = c
        .list_tasks(ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.total, 0);
}

#[tokio::test]
async fn unknown_and_malformed_ids() {
    let s = suite(false).await;
    let mut c = s.client.clone();
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(s.get(&unknown).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(
        c.get_task_result(GetTaskResultRequest {
            task_id: unknown.clone()
        })
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );
    assert_eq!(
        c.cancel_task(CancelTaskRequest {
            task_id: unknown.clone()
        })
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );
    assert_eq!(
        c.retry_task(RetryTaskRequest {
            task_id: unknown.clone()
        })
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );
    assert_eq!(
        c.watch_task(WatchTaskRequest { task_id: unknown })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    for bad in ["", "../etc", "a b", &"x".repeat(200)] {
        assert_eq!(
            s.get(bad).await.unwrap_err().code(),
            Code::InvalidArgument,
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn cancel_retry_list_stats_and_idempotency() {
    let s = suite(false).await;
    let mut c = s.client.clone();
    let a = s
        .submit("redline.noop", serde_json::json!({}))
        .await
        .unwrap();
    let cancelled = c
        .cancel_task(CancelTaskRequest {
            task_id: a.task_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.state, TaskState::Cancelled as i32);
    assert_eq!(s.get(&a.task_id).await.unwrap().status, "REVOKED");
    let again = c
        .cancel_task(CancelTaskRequest {
            task_id: a.task_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);

    let b = s
        .submit("redline.noop", serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(
        c.retry_task(RetryTaskRequest {
            task_id: b.task_id.clone()
        })
        .await
        .unwrap_err()
        .code(),
        Code::FailedPrecondition
    );
    assert_eq!(
        c.retry_task(RetryTaskRequest {
            task_id: a.task_id.clone()
        })
        .await
        .unwrap()
        .into_inner()
        .state,
        TaskState::Queued as i32
    );

    let req = SubmitTaskRequest {
        task_name: "redline.noop".into(),
        idempotency_key: "order-1".into(),
        ..Default::default()
    };
    let first = c.submit_task(req.clone()).await.unwrap().into_inner();
    let second = c.submit_task(req).await.unwrap().into_inner();
    assert_eq!((second.task_id, second.duplicate), (first.task_id, true));

    let pending = c
        .list_tasks(ListTasksRequest {
            status: "PENDING".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pending.total, 3);
    let page = c
        .list_tasks(ListTasksRequest {
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.total, 2);
    let rest = c
        .list_tasks(ListTasksRequest {
            limit: 2,
            page_token: page.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.total, 1);
    let bad = c
        .list_tasks(ListTasksRequest {
            status: "WEIRD".into(),
            page_token: "zzz".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&bad).len(), 2);

    let stats = c
        .get_queue_stats(GetQueueStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (stats.reserved_tasks, stats.active_tasks, stats.workers),
        (3, 0, 0)
    );
    assert_eq!(stats.queues[0].queue, "redline_tasks");

    let types = c
        .list_task_types(ListTaskTypesRequest {})
        .await
        .unwrap()
        .into_inner()
        .task_types;
    let sleep = types.iter().find(|t| t.name == "redline.sleep").unwrap();
    assert_eq!(
        (
            sleep.arguments[0].name.as_str(),
            sleep.arguments[0].r#type.as_str(),
            sleep.arguments[0].required
        ),
        ("seconds", "number", true)
    );

    let cleaned = c
        .cleanup_tasks(CleanupTasksRequest { days: Some(0) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cleaned.message, "Cleaned up tasks older than 0 days");
}

#[tokio::test]
async fn redis_outage_fails_fast_flips_readiness_and_recovers() {
    let mut s = suite(false).await;
    s.kit.redis.kill();
    let start = Instant::now();
    let err = s
        .submit("redline.noop", serde_json::json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
    s.wait_ready(false, Duration::from_secs(5)).await;
    let mut h = s.health.clone();
    let live = h
        .check(HealthCheckRequest {
            service: "liveness".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        live.status,
        ServingStatus::Serving as i32,
        "liveness never depends on redis"
    );

    s.kit.redis.restart();
    let back = Instant::now();
    s.wait_ready(true, Duration::from_secs(5)).await;
    loop {
        if s.submit("redline.noop", serde_json::json!({}))
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "no recovery within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn traceparent_metadata_is_stored_on_the_task() {
    let s = suite(false).await;
    let mut req = Request::new(SubmitTaskRequest {
        task_name: "redline.noop".into(),
        ..Default::default()
    });
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    req.metadata_mut()
        .insert("traceparent", tp.parse().unwrap());
    let id = s
        .client
        .clone()
        .submit_task(req)
        .await
        .unwrap()
        .into_inner()
        .task_id;
    // The stored context continues the caller's trace (TaskService's own span id when tracing is installed).
    let stored = s.get(&id).await.unwrap().traceparent;
    assert!(
        stored.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{stored}"
    );
}

/// An untraced submit to a service that exports no spans stores no trace context: nothing could be found
/// under it, and a queued task stays small.
#[tokio::test]
async fn untraced_submits_store_no_trace_context() {
    // As in the binary: the OpenTelemetry layer installed, no exporter configured.
    let telemetry = redline_runtime::telemetry::init("redline-tasks-test");
    assert!(!redline_runtime::telemetry::exporting());
    let s = suite(false).await;
    let id = s
        .client
        .clone()
        .submit_task(SubmitTaskRequest {
            task_name: "redline.noop".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .task_id;
    assert_eq!(s.get(&id).await.unwrap().traceparent, "");
    telemetry.flush();
}

/// SIGTERM with a shutdown delay: readiness turns NOT_SERVING at once while calls are still answered, so
/// endpoints can be removed before the listener closes.
#[tokio::test]
async fn shutdown_delay_answers_calls_while_not_ready() {
    let s = suite_with(false, Some("700ms")).await;
    s.kit.terminate_tasks();
    s.wait_ready(false, Duration::from_millis(300)).await;
    let stats = s
        .client
        .clone()
        .get_queue_stats(GetQueueStatsRequest::default())
        .await;
    assert!(stats.is_ok(), "still serving during the delay: {stats:?}");
    tokio::time::sleep(Duration::from_millis(900)).await;
    let closed = s
        .client
        .clone()
        .get_queue_stats(GetQueueStatsRequest::default())
        .await;
    assert_eq!(closed.map_err(|e| e.code()).err(), Some(Code::Unavailable));
}

/// `--disable-reflection` removes the reflection service (production); by default grpcurl can list services.
#[tokio::test]
async fn reflection_can_be_turned_off() {
    use tokio_stream::StreamExt as _;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;

    let redis = RedisServer::start();
    for disabled in [false, true] {
        let stop = CancellationToken::new();
        let mut flags = vec![
            "redline-tasks".to_owned(),
            "--redis-url".to_owned(),
            redis.url(),
        ];
        if disabled {
            flags.push("--disable-reflection".to_owned());
        }
        let args = <Args as clap::Parser>::parse_from(flags);
        let config = Config::from_args(args, &HashMap::new()).expect("config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(redline_tasks::run(config, listener, stop.clone()));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let answer = async {
            let mut stream = ServerReflectionClient::new(channel)
                .server_reflection_info(tokio_stream::iter([request]))
                .await?
                .into_inner();
            stream.next().await.transpose()
        }
        .await;
        match (disabled, answer) {
            (false, Ok(Some(reply))) => {
                use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
                let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response
                else {
                    panic!("not a service list: {reply:?}");
                };
                let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
                names.sort();
                // Exactly what this server serves: not RateLimitService, whose descriptors share the set.
                assert_eq!(
                    names,
                    ["grpc.health.v1.Health", "redline.tasks.v1.TaskService"]
                );
            }
            (true, Err(status)) => assert_eq!(status.code(), Code::Unimplemented),
            (d, other) => panic!("reflection disabled={d}: {other:?}"),
        }
        stop.cancel();
    }
}

/// Workers apply the retention TaskService publishes, not their own defaults: a result kept for a day by
/// a worker's flags would outlive what the operator configured on the service that answers for it.
#[tokio::test]
async fn finished_records_expire_after_the_services_result_ttl() {
    let kit = redline_testkit::Suite::builder()
        .tasks(&["--result-ttl", "90s"])
        .workers(1)
        .start()
        .await;
    let mut client = kit.tasks();
    let id = client
        .submit_task(SubmitTaskRequest {
            task_name: "redline.noop".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .task_id;
    redline_testkit::assert_eventually!(
        client
            .get_task(GetTaskRequest {
                task_id: id.clone()
            })
            .await
            .is_ok_and(|r| r.into_inner().task.unwrap_or_default().status == "SUCCESS"),
        "the task never finished"
    );
    let ttl: u64 = kit
        .redis
        .cli(&["TTL", &format!("{{redline}}:t:{id}")])
        .parse()
        .unwrap();
    assert!(
        (1..=90).contains(&ttl),
        "record TTL {ttl}s, want at most 90s"
    );
}

/// The calls in Redis's own accounting (`INFO commandstats`) of one command.
fn redis_calls(redis: &RedisServer, command: &str) -> u64 {
    let stats = redis.cli(&["INFO", "commandstats"]);
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A watcher that hangs up stops costing Redis anything at once, not when its task next changes.
#[tokio::test]
async fn watches_end_with_their_clients() {
    let kit = redline_testkit::Suite::builder().workers(0).start().await;
    let mut client = kit.tasks();
    let id = client
        .submit_task(SubmitTaskRequest {
            task_name: "redline.noop".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .task_id;
    let mut streams = Vec::new();
    for _ in 0..50 {
        let mut s = client
            .watch_task(WatchTaskRequest {
                task_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(s.message().await.unwrap().is_some(), "the first snapshot");
        streams.push(s);
    }
    // While they listen, each re-reads the queued task every second.
    let before = redis_calls(&kit.redis, "hgetall");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(redis_calls(&kit.redis, "hgetall") - before >= 50);
    drop(streams);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_hangup = redis_calls(&kit.redis, "hgetall");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let reads = redis_calls(&kit.redis, "hgetall") - after_hangup;
    // The service's own catalogue refresh reads one hash every 5 s.
    assert!(reads <= 2, "{reads} reads for watchers that hung up");
}

/// Past `--max-queues`, a submit naming a new queue is the client's to fix (INVALID_ARGUMENT on `queue`),
/// and the submissions that shared its batch are not refused with it.
#[tokio::test]
async fn a_queue_past_the_cap_is_refused_and_its_batch_neighbours_are_not() {
    let kit = redline_testkit::Suite::builder()
        .tasks(&["--max-queues", "1"])
        .workers(0)
        .start()
        .await;
    let client = kit.tasks();
    let submit = |queue: &str| {
        let mut c = client.clone();
        let req = SubmitTaskRequest {
            task_name: "redline.noop".into(),
            queue: queue.into(),
            ..Default::default()
        };
        async move { c.submit_task(req).await }
    };
    submit("redline_tasks").await.unwrap();
    let mut calls: Vec<_> = (0..30).map(|_| submit("redline_tasks")).collect();
    calls.push(submit("one_too_many"));
    let results = futures::future::join_all(calls).await;
    let (refused, ok): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_err);
    assert_eq!(ok.len(), 30);
    let err = refused.into_iter().next().unwrap().unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violations(&err)[0].0, "queue");
}
