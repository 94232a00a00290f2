//! Failure modes: Redis stopped, each rule does what its `failure_mode` says within the timeout, and normal
//! service resumes when Redis returns.

use std::time::{Duration, Instant};

use redline_proto::envoy::service::ratelimit::v3::RateLimitRequest;
use redline_proto::redline::ratelimit::v1 as pb;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use redline_testkit::RedisServer;

use crate::fixture::{Service, descriptor, rule_file};

const RULES: &str = r#"
domain: f
descriptors:
  - key: open
    failure_mode: open
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: closed
    failure_mode: closed
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: local
    failure_mode: local
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: error
    rate_limit: {unit: minute, requests_per_unit: 2}
"#;

/// Generous bound for one RPC on a loaded CI machine; the decision itself waits at most the decision timeout
/// (50 ms in these tests) for Redis, and not at all while the client knows it is disconnected.
const RPC_BOUND: Duration = Duration::from_millis(250);

fn request(key: &str, value: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        domain: "f".to_owned(),
        descriptors: vec![descriptor(&[(key, value)])],
        ..Default::default()
    }
}

async fn readiness(health: &mut HealthClient<tonic::transport::Channel>) -> ServingStatus {
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "readiness".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failure_mode_behaves_as_specified_and_service_resumes() {
    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = rule_file(dir.path(), RULES);
    let service = Service::start(
        &redis.url(),
        &["--config", path.to_str().unwrap(), "--timeout", "50ms"],
    )
    .await;
    let mut client = service.client().await;
    let mut health = HealthClient::new(
        tonic::transport::Channel::from_shared(service.endpoint.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    assert!(
        !client
            .check(request("error", "a"))
            .await
            .unwrap()
            .get_ref()
            .degraded
    );

    redis.kill();

    // open: allowed, whatever the count.
    for _ in 0..4 {
        let started = Instant::now();
        let r = client
            .check(request("open", "a"))
            .await
            .unwrap()
            .into_inner();
        assert!(started.elapsed() < RPC_BOUND, "{:?}", started.elapsed());
        assert!(r.allowed && r.degraded);
        assert_eq!(r.limits[0].source(), pb::DecisionSource::FailedOpen);
    }
    // closed: refused.
    let started = Instant::now();
    let r = client
        .check(request("closed", "a"))
        .await
        .unwrap()
        .into_inner();
    assert!(started.elapsed() < RPC_BOUND);
    assert!(!r.allowed);
    assert_eq!(r.limits[0].source(), pb::DecisionSource::FailedClosed);
    // local: the limit still holds, from process memory.
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let r = client
            .check(request("local", "a"))
            .await
            .unwrap()
            .into_inner();
        assert!(started.elapsed() < RPC_BOUND);
        assert_eq!(r.limits[0].source(), pb::DecisionSource::Local);
        outcomes.push(r.allowed);
    }
    assert_eq!(outcomes, [true, true, false]);
    // error (the default): UNAVAILABLE, on both APIs; never an OK answer with an UNKNOWN code.
    let started = Instant::now();
    let err = client.check(request("error", "a")).await.unwrap_err();
    assert!(started.elapsed() < RPC_BOUND);
    assert_eq!(err.code(), Code::Unavailable);
    let mut envoy = service.envoy().await;
    let err = envoy
        .should_rate_limit(RateLimitRequest {
            domain: "f".to_owned(),
            descriptors: vec![redline_proto::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor {
                entries: vec![redline_proto::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry {
                    key: "error".to_owned(),
                    value: "a".to_owned(),
                }],
                limit: None,
                hits_addend: None,
            }],
            hits_addend: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);

    // The counters say which failure modes were used.
    let counters = client
        .list_rules(pb::ListRulesRequest {})
        .await
        .unwrap()
        .into_inner()
        .counters
        .unwrap();
    assert_eq!(
        (
            counters.failed_open,
            counters.failed_closed,
            counters.local,
            counters.local_keys
        ),
        (4, 1, 3, 1)
    );
    assert!(counters.unavailable >= 2);

    // Readiness follows Redis (these rules do not all fail open); liveness does not.
    let mut ready = ServingStatus::Serving;
    for _ in 0..60 {
        ready = readiness(&mut health).await;
        if ready == ServingStatus::NotServing {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready, ServingStatus::NotServing);

    // Redis returns: the client reconnects by itself and decisions come from Redis again.
    redis.restart();
    let mut resumed = None;
    for _ in 0..100 {
        if let Ok(r) = client.check(request("error", "a")).await {
            resumed = Some(r.into_inner());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resumed = resumed.expect("service resumed after Redis came back");
    assert!(!resumed.degraded);
    assert_eq!(resumed.limits[0].source(), pb::DecisionSource::Redis);
    for _ in 0..60 {
        ready = readiness(&mut health).await;
        if ready == ServingStatus::Serving {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready, ServingStatus::Serving);
    service.stop().await;
}

#[tokio::test]
async fn readiness_ignores_redis_when_every_rule_fails_open() {
    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = rule_file(
        dir.path(),
        "domain: f\ndescriptors:\n  - key: k\n    failure_mode: open\n    rate_limit: {unit: minute, requests_per_unit: 1}\n",
    );
    let service = Service::start(&redis.url(), &["--config", path.to_str().unwrap()]).await;
    let mut health = HealthClient::new(
        tonic::transport::Channel::from_shared(service.endpoint.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    redis.kill();
    // Two failed probes a second apart flip readiness when Redis matters; here it must not flip.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(readiness(&mut health).await, ServingStatus::Serving);
    let mut client = service.client().await;
    let listed = client
        .list_rules(pb::ListRulesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        !listed.store_available,
        "the outage is still visible to operators"
    );
    service.stop().await;
}

/// A stalled Redis (SIGSTOP: the connection stays up, nothing answers) costs a decision at most the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_costs_a_decision_at_most_the_timeout() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = rule_file(dir.path(), RULES);
    let service = Service::start(
        &redis.url(),
        &["--config", path.to_str().unwrap(), "--timeout", "100ms"],
    )
    .await;
    let mut client = service.client().await;
    assert!(
        !client
            .check(request("open", "s"))
            .await
            .unwrap()
            .get_ref()
            .degraded
    );

    redis.pause();
    for _ in 0..3 {
        let started = Instant::now();
        let r = client
            .check(request("open", "s"))
            .await
            .unwrap()
            .into_inner();
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(90),
            "waited for Redis: {elapsed:?}"
        );
        assert!(
            elapsed < Duration::from_millis(100) + RPC_BOUND,
            "{elapsed:?}"
        );
        assert!(r.allowed);
        assert_eq!(r.limits[0].source(), pb::DecisionSource::FailedOpen);
    }
    let started = Instant::now();
    let err = client.check(request("error", "s")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(started.elapsed() < Duration::from_millis(100) + RPC_BOUND);

    redis.resume();
    let mut resumed = false;
    for _ in 0..100 {
        if let Ok(r) = client.check(request("error", "s")).await
            && r.get_ref().limits[0].source() == pb::DecisionSource::Redis
        {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(resumed, "decisions come from Redis again after it resumes");
    service.stop().await;
}

/// The very first decision after start-up comes from Redis: the service connects and loads its script before
/// it serves, instead of answering the first callers from a failure mode while its client is still connecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_decision_after_start_comes_from_redis() {
    use clap::Parser as _;
    let redis = RedisServer::start();
    let args = redline_ratelimit::Args::try_parse_from([
        "redline-ratelimit",
        "--redis-url",
        &redis.url(),
        "--key-prefix",
        "first:rl",
    ])
    .expect("flags");
    let no_env = std::collections::HashMap::<String, String>::new();
    let config = redline_ratelimit::Config::from_args(args, &no_env).expect("config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(redline_ratelimit::run(config, listener, stop.clone()));
    let mut client = pb::rate_limit_service_client::RateLimitServiceClient::connect(endpoint)
        .await
        .expect("connect");
    // Default decision timeout (20 ms) and failure mode `error`: a decision not made by Redis is an error.
    let first = client
        .check(pb::CheckRequest {
            key: "first-call".to_owned(),
            limit_expression: "10 per minute".to_owned(),
            ..Default::default()
        })
        .await
        .expect("the first decision is made, not refused");
    assert!(first.get_ref().allowed);
    assert!(
        !first.get_ref().degraded,
        "decided by Redis, not a failure mode"
    );
    stop.cancel();
}
