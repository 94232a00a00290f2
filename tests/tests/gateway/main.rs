//! The REST gateway end to end, through real TaskService, worker, RateLimitService and Redis.

mod contract;
mod fixture;

use std::time::{Duration, Instant};

use futures::StreamExt;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use fixture::assert_golden;
use redline_testkit::Suite;

/// TaskService, a worker, RateLimitService and the gateway with these extra flags.
async fn gateway_suite(flags: &[&str]) -> Suite {
    Suite::builder().ratelimit(&[]).gateway(flags).start().await
}

/// Submit, follow the status to SUCCESS, read the result: the original's shapes, field by field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_status_result_round_trip() {
    let suite = gateway_suite(&[]).await;
    let r = suite
        .post(
            "/tasks/submit",
            json!({"task_name": "redline.echo", "kwargs": {"ticker": "AAPL", "n": 3}, "priority": 7}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_golden("submit", &r.body);
    let id = r.body["task_id"].as_str().expect("task_id").to_owned();
    let record = suite.wait_status(&id, &["SUCCESS"]).await;
    assert_eq!(record["task_id"], json!(id));
    assert_eq!(record["kwargs"], json!({"ticker": "AAPL", "n": 3}));
    assert_eq!(record["priority"], json!(7));
    assert_eq!(record["state"], json!("succeeded"));
    assert!(
        record["submitted_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{record}"
    );
    assert_golden("status_success", &record);
    let r = suite.get(&format!("/tasks/result/{id}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.body.get("result").is_some_and(|v| !v.is_null()),
        "{}",
        r.body
    );
    assert_golden("result_success", &r.body);
}

/// A failed task's result is 200 with a null result, its status and error: never the original's 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_task_result_is_not_500() {
    let suite = gateway_suite(&[]).await;
    let r = suite
        .post(
            "/tasks/submit",
            json!({"task_name": "redline.fail", "kwargs": {"message": "boom", "retryable": false}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let id = r.body["task_id"].as_str().expect("task_id").to_owned();
    let record = suite.wait_status(&id, &["FAILURE"]).await;
    assert!(
        record["error"].as_str().is_some_and(|e| e.contains("boom")),
        "{record}"
    );
    let r = suite.get(&format!("/tasks/result/{id}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["result"], Value::Null);
    assert_eq!(r.body["status"], json!("FAILURE"));
    assert!(r.body["error"].as_str().is_some_and(|e| e.contains("boom")));
}

/// Unknown ids are 404 `Task not found` on status, result and cancel, with grpc-gateway's fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_are_404() {
    let suite = gateway_suite(&[]).await;
    for (method, path) in [
        (Method::GET, "/tasks/status/no-such-task"),
        (Method::GET, "/tasks/result/no-such-task"),
        (Method::POST, "/tasks/cancel/no-such-task"),
    ] {
        let r = suite.send(method, path, None, Vec::new(), &[]).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.body);
        assert_eq!(r.body["error"], json!("Task not found"));
        assert_eq!(r.body["code"], json!(5));
        assert_golden("not_found", &r.body);
    }
}

/// Cancel of a scheduled task, then of the finished (cancelled) task: 200, then 400 (FAILED_PRECONDITION).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_list_stats_cleanup() {
    let suite = gateway_suite(&[]).await;
    let r = suite
        .post(
            "/tasks/submit",
            json!({"task_name": "redline.sleep", "kwargs": {"seconds": 30}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let id = r.body["task_id"].as_str().expect("task_id").to_owned();
    let r = suite
        .post(&format!("/tasks/cancel/{id}"), Value::Null)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body,
        json!({"message": format!("Task {id} cancelled successfully")})
    );
    suite.wait_status(&id, &["REVOKED"]).await;
    let r = suite
        .send(
            Method::POST,
            &format!("/tasks/cancel/{id}"),
            None,
            Vec::new(),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(r.body["code"], json!(9));

    let r = suite
        .post("/tasks/submit", json!({"task_name": "redline.noop"}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = suite.get("/tasks/list?limit=10").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["total"], json!(2));
    assert_eq!(r.body["filter"], Value::Null);
    let r = suite.get("/tasks/list?status=REVOKED").await;
    assert_eq!(r.body["total"], json!(1), "{}", r.body);
    assert_eq!(r.body["filter"], json!("REVOKED"));
    assert_eq!(r.body["tasks"][0]["task_id"], json!(id));
    let r = suite.get("/tasks/list?limit=ten").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let r = suite.get("/tasks/queue/stats").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_golden("queue_stats", &r.body);
    assert!(r.body["registered_tasks"].as_u64().is_some_and(|n| n >= 4));

    let r = suite.post("/tasks/cleanup", json!({"days": 3})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body,
        json!({"message": "Cleaned up tasks older than 3 days"})
    );
    let r = suite
        .send(Method::POST, "/tasks/cleanup", None, Vec::new(), &[])
        .await;
    assert_eq!(
        r.body,
        json!({"message": "Cleaned up tasks older than 7 days"})
    );
}

/// Required fields in the original's order and messages; data-task routes reach TaskService.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_routes_validate_like_the_original() {
    let suite = gateway_suite(&[]).await;
    let cases = [
        ("/tasks/submit", json!({}), "task_name is required"),
        (
            "/tasks/convert",
            json!({"output_format": "csv"}),
            "input_file is required",
        ),
        (
            "/tasks/convert",
            json!({"input_file": "a.csv"}),
            "output_format is required",
        ),
        (
            "/tasks/convert",
            json!({"input_file": "a.csv", "output_format": "json"}),
            "output_file is required",
        ),
        (
            "/tasks/download",
            json!({"ticker": "AAPL"}),
            "start_date is required",
        ),
        (
            "/tasks/analyze",
            json!({"data_file": "x.csv"}),
            "analysis_type is required",
        ),
        (
            "/tasks/upload",
            json!({"target_format": "csv"}),
            "file_path is required",
        ),
        ("/tasks/bulk", json!({}), "operations is required"),
        (
            "/tasks/bulk",
            json!({"operations": []}),
            "operations must be a non-empty list",
        ),
        (
            "/tasks/bulk",
            json!({"operations": "x"}),
            "operations must be a non-empty list",
        ),
        (
            "/tasks/submit",
            json!({"task_name": "redline.noop", "priority": 12}),
            "priority must be an integer from 0 to 9",
        ),
    ];
    for (path, body, error) in cases {
        let r = suite.post(path, body.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{path} {body}: {}",
            r.body
        );
        assert_eq!(r.body["error"], json!(error), "{path} {body}");
        assert_eq!(r.body["code"], json!(3));
    }
    assert_golden(
        "bad_request",
        &suite.post("/tasks/bulk", json!({})).await.body,
    );

    // An unknown task type is TaskService's INVALID_ARGUMENT with BadRequest details.
    let r = suite
        .post("/tasks/submit", json!({"task_name": "no_such_task"}))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(r.body["code"], json!(3));
    assert_eq!(
        r.body["details"][0]["@type"],
        json!("type.googleapis.com/google.rpc.BadRequest"),
        "{}",
        r.body
    );

    // The data-task routes submit their task: accepted once the type is registered, otherwise rejected by
    // TaskService's validation (never a gateway error).
    let valid = [
        (
            "/tasks/convert",
            json!({"input_file": "a.csv", "output_format": "json", "output_file": "b.json"}),
            "process_data_conversion",
        ),
        (
            "/tasks/download",
            json!({"ticker": "AAPL", "start_date": "2024-01-01", "end_date": "2024-02-01", "source": "stooq"}),
            "process_data_download",
        ),
        (
            "/tasks/analyze",
            json!({"data_file": "a.csv", "analysis_type": "basic", "options": {"window": 5}}),
            "process_data_analysis",
        ),
        (
            "/tasks/upload",
            json!({"file_path": "a.csv"}),
            "process_file_upload",
        ),
        (
            "/tasks/bulk",
            json!({"operations": [{"type": "analyze", "data": {}}], "options": {"x": 1}}),
            "process_bulk_operations",
        ),
    ];
    for (path, body, task_name) in valid {
        let r = suite.post(path, body).await;
        match r.status {
            StatusCode::OK => {
                let id = r.body["task_id"].as_str().expect("task_id");
                let rec = suite.get(&format!("/tasks/status/{id}")).await.body;
                assert!(
                    rec["task_name"]
                        .as_str()
                        .is_some_and(|n| n.ends_with(task_name)),
                    "{rec}"
                );
                if path == "/tasks/analyze" {
                    assert_eq!(rec["kwargs"]["options"], json!({"window": 5}), "{rec}");
                }
                if path == "/tasks/bulk" {
                    assert_eq!(rec["kwargs"]["options"], json!({"x": 1}), "{rec}");
                }
            }
            // TaskService's verdict (an unregistered type, or its argument schema), passed through with
            // its BadRequest details: the gateway's own checks already passed.
            StatusCode::BAD_REQUEST => {
                assert_eq!(r.body["code"], json!(3), "{path}: {}", r.body);
                assert_eq!(
                    r.body["details"][0]["@type"],
                    json!("type.googleapis.com/google.rpc.BadRequest"),
                    "{path}: {}",
                    r.body
                );
            }
            other => panic!("{path}: {other} {}", r.body),
        }
    }
}

/// Non-JSON, malformed, non-UTF-8, non-object and huge bodies: 400/413/415 with a JSON error, never 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_are_client_errors() {
    let suite = gateway_suite(&[]).await;
    let cases: Vec<(Option<&str>, Vec<u8>, StatusCode)> = vec![
        (
            Some("text/plain"),
            b"task_name=x".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            None,
            b"{\"task_name\": \"redline.noop\"}".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            Some("application/json"),
            b"{\"task_name\": ".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Some("application/json"),
            vec![0xff, 0xfe, b'{', b'}'],
            StatusCode::BAD_REQUEST,
        ),
        (
            Some("application/json"),
            b"[1, 2]".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Some("application/json"),
            format!("{{\"task_name\": \"{}\"}}", "x".repeat(2 << 20)).into_bytes(),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (ct, body, want) in cases {
        let r = suite
            .send(Method::POST, "/tasks/submit", ct, body, &[])
            .await;
        assert_eq!(r.status, want, "{ct:?}: {}", r.body);
        assert!(r.body["error"].is_string(), "{}", r.body);
        assert!(r.body["code"].is_number());
    }
    let r = suite
        .send(
            Method::POST,
            "/tasks/convert",
            Some("text/html"),
            b"<p>".to_vec(),
            &[],
        )
        .await;
    assert_golden("unsupported_media_type", &r.body);
    // A large but acceptable kwargs payload still round-trips.
    let big = "y".repeat(100_000);
    let r = suite
        .post(
            "/tasks/submit",
            json!({"task_name": "redline.echo", "kwargs": {"blob": big}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

/// Headers on every /tasks response, 429 with Retry-After and a JSON body, and limits that survive a restart
/// of the gateway and of RateLimitService.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_headers_429_and_persistence() {
    let mut suite = gateway_suite(&["--route-limit", "GET /tasks/list=3 per hour"]).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for remaining in [2, 1] {
        let r = suite.get("/tasks/list").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(
            r.header("x-ratelimit-remaining"),
            Some(remaining.to_string().as_str())
        );
        let reset: u64 = r
            .header("x-ratelimit-reset")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(reset >= before + 3500 && reset <= before + 3700, "{reset}");
        assert_eq!(r.header("ratelimit-policy"), Some("\"3-3600s\";q=3;w=3600"));
        assert!(
            r.header("ratelimit")
                .is_some_and(|v| v.contains(&format!(";r={remaining};")))
        );
    }
    // Other routes keep the defaults: 50 per hour is the most restrictive.
    let r = suite.get("/tasks/queue/stats").await;
    assert_eq!(r.header("x-ratelimit-limit"), Some("50"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("49"));

    suite.restart_gateway().await;
    let r = suite.get("/tasks/list").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    let r = suite.get("/tasks/list").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert_eq!(r.body["error"], json!("Rate limit exceeded: 3 per 1 hour"));
    assert_eq!(r.body["code"], json!(8));
    let retry = r
        .header("retry-after")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!((3500..=3600).contains(&retry), "{retry}");
    assert_eq!(r.body["retry_after"], json!(retry));
    assert_golden("rate_limited", &r.body);

    suite.stop_ratelimit().await;
    suite.start_ratelimit().await;
    let r = suite.get("/tasks/list").await;
    assert_eq!(
        r.status,
        StatusCode::TOO_MANY_REQUESTS,
        "after a RateLimitService restart: {:?}",
        r.headers
    );
}

/// Concurrent requests share the gateway's decision streams, and each gets its own decision: requests on two
/// routes with different limits, all in flight at once, each carry their route's limit, and every allowed
/// request saw a different count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_each_get_their_own_decision() {
    let suite = gateway_suite(&["--route-limit", "GET /tasks/list=7 per hour"]).await;
    let paths = ["/tasks/list", "/tasks/queue/stats"];
    let replies = futures::future::join_all((0..40).map(|i| suite.get(paths[i % 2]))).await;
    for (path, limit, allowed) in [("/tasks/list", "7", 7), ("/tasks/queue/stats", "50", 20)] {
        let mut remaining = Vec::new();
        for r in replies
            .iter()
            .skip(usize::from(path != "/tasks/list"))
            .step_by(2)
        {
            assert_eq!(
                r.header("x-ratelimit-limit"),
                Some(limit),
                "{path}: {}",
                r.body
            );
            if r.status == StatusCode::OK {
                remaining.push(r.header("x-ratelimit-remaining").unwrap_or("").to_owned());
            } else {
                assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
            }
        }
        assert_eq!(remaining.len(), allowed, "{path}");
        remaining.sort();
        remaining.dedup();
        assert_eq!(
            remaining.len(),
            allowed,
            "{path}: each allowed request saw its own count"
        );
    }
}

/// With RateLimitService down the gateway keeps serving with its local limiter: no 500, no long waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratelimit_down_fails_open_locally() {
    let mut suite = gateway_suite(&[
        "--route-limit",
        "GET /tasks/queue/stats=2 per minute",
        "--ratelimit-timeout",
        "100ms",
    ])
    .await;
    suite.stop_ratelimit().await;
    for _ in 0..2 {
        let started = Instant::now();
        let r = suite.get("/tasks/queue/stats").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.header("x-ratelimit-limit"), Some("2"));
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    let r = suite.get("/tasks/queue/stats").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert_eq!(
        r.body["error"],
        json!("Rate limit exceeded: 2 per 1 minute")
    );
}

/// `closed` refuses with 503 while RateLimitService is away; `open` serves without limit headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratelimit_down_closed_and_open_modes() {
    for (mode, want) in [
        ("closed", StatusCode::SERVICE_UNAVAILABLE),
        ("open", StatusCode::OK),
    ] {
        let mut suite = gateway_suite(&[
            "--ratelimit-failure-mode",
            mode,
            "--ratelimit-timeout",
            "100ms",
        ])
        .await;
        suite.stop_ratelimit().await;
        let r = suite.get("/tasks/list").await;
        assert_eq!(r.status, want, "{mode}: {}", r.body);
        if mode == "open" {
            assert!(r.header("x-ratelimit-limit").is_none());
        }
    }
}

/// Health: /healthz always, /readyz and /tasks/health follow TaskService, Redis and workers; with Redis down
/// every request answers 503 within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_redis_outage() {
    let mut suite = gateway_suite(&[]).await;
    suite.wait_healthy().await;
    let r = suite.get("/tasks/health").await;
    assert_eq!(r.body["status"], json!("healthy"));
    assert_eq!(r.body["celery_connected"], json!(true));
    assert_golden("health", &r.body);
    assert_eq!(suite.get("/readyz").await.status, StatusCode::OK);
    assert_eq!(suite.get("/healthz").await.status, StatusCode::OK);

    suite.redis.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (method, path, body) in [
        (
            Method::POST,
            "/tasks/submit",
            json!({"task_name": "redline.noop"}),
        ),
        (Method::GET, "/tasks/status/abc", Value::Null),
        (Method::GET, "/tasks/list", Value::Null),
        (Method::GET, "/tasks/queue/stats", Value::Null),
        (Method::GET, "/tasks/health", Value::Null),
    ] {
        let started = Instant::now();
        let r = suite
            .send(
                method,
                path,
                Some("application/json"),
                body.to_string().into_bytes(),
                &[],
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{path}: {}",
            r.body
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{path} took {:?}",
            started.elapsed()
        );
        assert!(r.body["error"].is_string());
    }
    let r = suite.get("/tasks/health").await;
    assert_eq!(r.body["status"], json!("unhealthy"));
    assert_eq!(r.body["celery_connected"], json!(false));
    assert_eq!(suite.get("/healthz").await.status, StatusCode::OK);
}

/// TaskService unreachable: 503 within a second, /readyz 503, /healthz 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_service_down_is_503() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    let suite = gateway_suite(&["--tasks-url", &format!("http://{dead_addr}")]).await;
    for path in ["/tasks/status/x", "/tasks/health", "/readyz"] {
        let started = Instant::now();
        let r = suite.get(path).await;
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{path}: {}",
            r.body
        );
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    assert_eq!(suite.get("/healthz").await.status, StatusCode::OK);
}

/// API keys: 401 JSON without or with a wrong key; the key is the rate-limit client; health stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys() {
    let dir = std::env::temp_dir().join(format!("redline-gw-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("keys");
    std::fs::write(&file, "# operators\nsecret-one\nsecret-two\n").expect("write");
    let suite = gateway_suite(&["--api-keys-file", &file.display().to_string()]).await;
    let r = suite.get("/tasks/list").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.body["error"], json!("API key required"));
    assert_eq!(r.body["code"], json!(16));
    let r = suite
        .send(
            Method::GET,
            "/tasks/list",
            None,
            Vec::new(),
            &[("x-api-key", "secret-three")],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = suite
        .send(
            Method::GET,
            "/tasks/list",
            None,
            Vec::new(),
            &[("x-api-key", "secret-two")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.header("x-ratelimit-remaining"), Some("49"));
    let r = suite
        .send(
            Method::GET,
            "/tasks/list",
            None,
            Vec::new(),
            &[("authorization", "Bearer secret-one")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // A different key is a different client.
    assert_eq!(r.header("x-ratelimit-remaining"), Some("49"));
    assert_ne!(
        suite.get("/tasks/health").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(suite.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(suite.get("/openapi.json").await.status, StatusCode::OK);
}

/// A client still sending an oversized body gets the 413 and its JSON, not a connection reset: the gateway
/// reads the rest of the body before answering (without that, the kernel resets the connection while the
/// client's bytes are unread, and the answer is lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_gets_413_while_the_client_is_still_sending() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let suite = gateway_suite(&[]).await;
    let body = format!("{{\"task_name\": \"{}\"}}", "x".repeat(3 << 20));
    let mut stream = tokio::net::TcpStream::connect(suite.gateway_addr())
        .await
        .expect("connect");
    let head = format!(
        "POST /tasks/submit HTTP/1.1\r\nhost: gw\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let (first, rest) = body.as_bytes().split_at(3 << 19);
    stream.write_all(first).await.expect("first part");
    // The gateway has seen more than its 1 MiB limit by now, and has decided.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream
        .write_all(rest)
        .await
        .expect("the gateway still reads the body");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        matches!(read, Ok(Ok(_))),
        "reading the answer failed: {read:?} after {answer:?}"
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("\"error\":\"Request body is larger than 1048576 bytes\""),
        "{answer}"
    );
}

/// Every route's real success body, and the error body, fit the response schemas of `/openapi.json`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_response_schemas_describe_the_bodies() {
    let suite = gateway_suite(&[]).await;
    suite.wait_healthy().await;
    let doc = suite.get("/openapi.json").await.body;
    let check = |method: &str, route: &str, status: u16, body: &Value| {
        let schema = &doc["paths"][route][method]["responses"][status.to_string()]["content"]["application/json"]
            ["schema"];
        assert!(
            !schema.is_null(),
            "{method} {route} documents no {status} body"
        );
        let problems = fixture::schema_mismatches(&doc, schema, body, "$");
        assert!(
            problems.is_empty(),
            "{method} {route} {status}: {problems:#?}\n{body}"
        );
    };
    let submitted = suite
        .post(
            "/tasks/submit",
            json!({"task_name": "redline.echo", "kwargs": {"ticker": "AAPL"}}),
        )
        .await;
    check("post", "/tasks/submit", 200, &submitted.body);
    let id = submitted.body["task_id"]
        .as_str()
        .expect("task_id")
        .to_owned();
    let done = suite.wait_status(&id, &["SUCCESS"]).await;
    check("get", "/tasks/status/{task_id}", 200, &done);
    let r = suite.get(&format!("/tasks/result/{id}")).await;
    check("get", "/tasks/result/{task_id}", 200, &r.body);
    let r = suite.get("/tasks/list?limit=5").await;
    assert!(
        r.body["total"].as_u64().is_some_and(|n| n >= 1),
        "{}",
        r.body
    );
    check("get", "/tasks/list", 200, &r.body);
    let r = suite.get("/tasks/queue/stats").await;
    check("get", "/tasks/queue/stats", 200, &r.body);
    let r = suite.get("/tasks/health").await;
    check("get", "/tasks/health", 200, &r.body);
    let later = suite
        .post(
            "/tasks/submit",
            json!({"task_name": "redline.sleep", "kwargs": {"seconds": 30}}),
        )
        .await;
    let later = later.body["task_id"].as_str().expect("task_id").to_owned();
    let r = suite
        .post(&format!("/tasks/cancel/{later}"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    check("post", "/tasks/cancel/{task_id}", 200, &r.body);
    let r = suite.post("/tasks/cleanup", json!({"days": 1})).await;
    check("post", "/tasks/cleanup", 200, &r.body);
    let r = suite.get("/tasks/status/no-such-task").await;
    check("get", "/tasks/status/{task_id}", 404, &r.body);
    // The checker itself refuses a body that strays from the schema.
    let mut wrong = done.clone();
    wrong["priority"] = json!("high");
    wrong["colour"] = json!("red");
    let schema = json!({"$ref": "#/components/schemas/Task"});
    assert_eq!(
        fixture::schema_mismatches(&doc, &schema, &wrong, "$").len(),
        2
    );
}

/// The OpenAPI document lists exactly the served routes, and every annotated RPC is served at its path and
/// method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_and_proto_rules_match_served_routes() {
    let suite = gateway_suite(&[]).await;
    let doc = suite.get("/openapi.json").await.body;
    let paths = doc["paths"].as_object().expect("paths");
    let mut documented = Vec::new();
    for (path, ops) in paths {
        for method in ops.as_object().expect("ops").keys() {
            documented.push((method.to_ascii_uppercase(), path.clone()));
        }
    }
    let mut served: Vec<(String, String)> = redline_gateway::routes::ROUTES
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    for p in ["/healthz", "/readyz", "/openapi.json"] {
        served.push(("GET".into(), p.into()));
    }
    documented.sort();
    served.sort();
    assert_eq!(documented, served);
    let rules = redline_gateway::http_rules::task_service_rules().expect("rules");
    assert!(!rules.is_empty());
    for (method, path) in rules
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .chain(served)
    {
        let concrete = path.replace("{task_id}", "no-such-task");
        let m = Method::from_bytes(method.as_bytes()).expect("method");
        let r = suite
            .send(
                m.clone(),
                &concrete,
                Some("application/json"),
                b"{}".to_vec(),
                &[],
            )
            .await;
        assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(
            r.status != StatusCode::NOT_FOUND || r.body["error"] == json!("Task not found"),
            "{method} {path} not served: {}",
            r.body
        );
        // The same path with another method is not served.
        let other = if m == Method::GET {
            Method::DELETE
        } else {
            Method::GET
        };
        let r = suite.send(other, &concrete, None, Vec::new(), &[]).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
    }
}

/// 1,000 parallel submits: every one answered 200 with a distinct id, and every task is in the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_parallel_submits() {
    let suite = gateway_suite(&["--route-limit", "POST /tasks/submit=100000 per hour"]).await;
    let suite = &suite;
    let ids: Vec<String> = futures::stream::iter(0..1000)
        .map(|i| async move {
            let r = suite
                .post(
                    "/tasks/submit",
                    json!({"task_name": "redline.echo", "kwargs": {"i": i}}),
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            r.body["task_id"].as_str().expect("task_id").to_owned()
        })
        .buffer_unordered(200)
        .collect()
        .await;
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 1000);
    let r = suite.get("/tasks/list?limit=1000").await;
    assert_eq!(r.body["total"], json!(1000));
    let mut listed: Vec<String> = r.body["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["task_id"].as_str().map(str::to_owned))
        .collect();
    listed.sort();
    assert_eq!(listed, unique);
}

/// `X-Forwarded-For` names the client only behind a trusted proxy; `--reset-header delta` sends seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_and_delta_reset() {
    let trusted =
        gateway_suite(&["--trusted-proxies", "127.0.0.1", "--reset-header", "delta"]).await;
    for (ip, remaining) in [("9.9.9.9", "49"), ("9.9.9.9", "48"), ("8.8.8.8", "49")] {
        let r = trusted
            .send(
                Method::GET,
                "/tasks/list",
                None,
                Vec::new(),
                &[("x-forwarded-for", ip)],
            )
            .await;
        assert_eq!(r.header("x-ratelimit-remaining"), Some(remaining), "{ip}");
        let reset: u64 = r
            .header("x-ratelimit-reset")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!((3500..=3600).contains(&reset), "delta reset {reset}");
    }
    let untrusted = gateway_suite(&[]).await;
    for (ip, remaining) in [("9.9.9.9", "49"), ("8.8.8.8", "48")] {
        let r = untrusted
            .send(
                Method::GET,
                "/tasks/list",
                None,
                Vec::new(),
                &[("x-forwarded-for", ip)],
            )
            .await;
        assert_eq!(r.header("x-ratelimit-remaining"), Some(remaining), "{ip}");
    }
}

/// The caller's W3C trace id is logged, echoed in `X-Trace-Id` and stored with the task by TaskService.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_reaches_task_service() {
    let suite = gateway_suite(&[]).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = suite
        .send(
            Method::POST,
            "/tasks/submit",
            Some("application/json"),
            br#"{"task_name": "redline.noop"}"#.to_vec(),
            &[(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.header("x-trace-id"), Some(trace));
    let id = r.body["task_id"].as_str().expect("task_id").to_owned();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", suite.tasks_addr()))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let task = redline_proto::tasks::task_service_client::TaskServiceClient::new(channel)
        .get_task(redline_proto::tasks::GetTaskRequest { task_id: id })
        .await
        .expect("get")
        .into_inner()
        .task
        .expect("task");
    assert!(
        task.traceparent.starts_with(&format!("00-{trace}-")),
        "{}",
        task.traceparent
    );
    // Without a caller trace, a fresh id is still returned.
    let r = suite.get("/tasks/list").await;
    assert_eq!(r.header("x-trace-id").map(str::len), Some(32));
}

/// A Redis that is full or read-only (a failover in progress) is the service's condition, not the client's
/// mistake: 503 with a JSON body, never 500; a submit refused that way left nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_or_read_only_redis_answers_503() {
    let suite = Suite::builder().workers(0).gateway(&[]).start().await;
    let submit = || suite.post("/tasks/submit", json!({"task_name": "redline.noop"}));
    suite.redis.set_maxmemory("1");
    let r = submit().await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(r.body["error"].is_string(), "{}", r.body);
    suite.redis.set_maxmemory("0");

    // A failover: a replica takes over and this Redis now follows it, answering READONLY to writes.
    let replica = redline_testkit::RedisServer::start();
    replica.follow(&suite.redis);
    replica.promote();
    suite.redis.follow(&replica);
    let r = submit().await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    suite.redis.promote();
    assert_eq!(submit().await.status, StatusCode::OK);
}

/// A worker that died without leaving (SIGKILL) keeps its registration until a peer reaps it; it is not a
/// live worker, and with no other the task service is unhealthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_workers_registration_does_not_count_as_alive() {
    let suite = Suite::builder().workers(0).gateway(&[]).start().await;
    let expired_ms = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        - 60_000)
        .to_string();
    assert_eq!(
        suite
            .redis
            .cli(&["ZADD", "{redline}:workers", &expired_ms, "killed-worker"]),
        "1"
    );
    let r = suite.get("/tasks/health").await;
    assert_eq!(r.body["status"], json!("unhealthy"), "{}", r.body);
    assert_eq!(r.body["workers"], json!(0));
    assert_eq!(r.body["error"], json!("No worker alive"));
}
