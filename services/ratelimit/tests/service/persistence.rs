//! Persistence: state lives only in Redis, so it survives a SIGKILL of the service, and a Redis restart with
//! AOF.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use redline_proto::redline::ratelimit::v1 as pb;
use redline_proto::redline::ratelimit::v1::rate_limit_service_client::RateLimitServiceClient;

use redline_testkit::{RedisServer, free_port};

use crate::fixture::{Service, spec};

fn request() -> pb::CheckRequest {
    pb::CheckRequest {
        key: "persist".to_owned(),
        limits: vec![
            spec(
                "fw",
                5,
                Duration::from_secs(3600),
                pb::Algorithm::FixedWindow,
            ),
            spec("gcra", 5, Duration::from_secs(3600), pb::Algorithm::Gcra),
            spec(
                "sw",
                5,
                Duration::from_secs(3600),
                pb::Algorithm::SlidingWindow,
            ),
        ],
        ..Default::default()
    }
}

fn spawn_binary(redis_url: &str, addr: SocketAddr, prefix: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_redline-ratelimit"))
        .args([
            "--listen",
            &addr.to_string(),
            "--redis-url",
            redis_url,
            "--key-prefix",
            prefix,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("service binary")
}

async fn connect(addr: SocketAddr) -> RateLimitServiceClient<tonic::transport::Channel> {
    for _ in 0..200 {
        if let Ok(c) = RateLimitServiceClient::connect(format!("http://{addr}")).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("service did not start");
}

/// Retries until Redis answers (the service may still be connecting).
async fn check(
    client: &mut RateLimitServiceClient<tonic::transport::Channel>,
) -> pb::CheckResponse {
    for _ in 0..200 {
        if let Ok(r) = client.check(request()).await
            && !r.get_ref().degraded
        {
            return r.into_inner();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no decision from Redis");
}

fn remaining(r: &pb::CheckResponse) -> Vec<u64> {
    r.limits.iter().map(|l| l.remaining).collect()
}

#[tokio::test]
async fn quota_survives_a_sigkill_of_the_service() {
    let redis = RedisServer::start();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let prefix = format!("persist{}", rand::random::<u32>());
    let mut first = spawn_binary(&redis.url(), addr, &prefix);
    let mut client = connect(addr).await;
    for _ in 0..3 {
        assert!(check(&mut client).await.allowed);
    }
    first.kill().unwrap(); // SIGKILL: no graceful shutdown.
    first.wait().unwrap();

    let mut second = spawn_binary(&redis.url(), addr, &prefix);
    let mut client = connect(addr).await;
    let r = check(&mut client).await;
    assert!(r.allowed);
    assert_eq!(remaining(&r), vec![1, 1, 1]);
    assert!(check(&mut client).await.allowed);
    assert!(!check(&mut client).await.allowed);
    second.kill().unwrap();
    second.wait().unwrap();
}

#[tokio::test]
async fn quota_survives_a_redis_restart_with_aof() {
    let mut redis = RedisServer::start_persistent();
    let service = Service::start(&redis.url(), &[]).await;
    let mut client = service.client().await;
    for _ in 0..3 {
        assert!(check(&mut client).await.allowed);
    }
    redis.restart();
    let r = check(&mut client).await;
    assert!(r.allowed);
    assert_eq!(remaining(&r), vec![1, 1, 1]);
    assert!(check(&mut client).await.allowed);
    assert!(!check(&mut client).await.allowed);
    service.stop().await;
}

/// Configuration errors are all reported at once, with exit code 64 (EX_USAGE), before anything starts.
#[test]
fn invalid_configuration_exits_64_listing_every_problem() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let rules = crate::fixture::rule_file(
        dir.path(),
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_redline-ratelimit"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--timeout",
            "0s",
            "--key-prefix",
            "a{b",
        ])
        .arg("--config")
        .arg(&rules)
        .env("REDIS_URL", "redis://:s3cret@127.0.0.1:1/0")
        .output()
        .expect("service binary");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in ["--timeout", "--key-prefix", "fortnight"] {
        assert!(
            stderr.contains(expected),
            "{expected} missing from {stderr}"
        );
    }
    assert!(
        !stderr.contains("s3cret"),
        "the Redis password must never be printed"
    );
}

/// A Redis that may evict keys would forget counters early: the service refuses it (exit 69, a failed start),
/// unless told otherwise.
#[test]
fn an_evicting_redis_is_refused_unless_allowed() {
    let redis = RedisServer::builder()
        .args(&["--maxmemory-policy", "allkeys-lru"])
        .start();
    let run = |extra: &[&str]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_redline-ratelimit"))
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--redis-url", &redis.url()])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("service binary");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(run(&[]), Some(69), "refused with the failed-start code");
    assert_eq!(
        run(&["--allow-evicting-redis"]),
        None,
        "still serving when allowed"
    );
}

/// An address already taken is a failed start (69), as for every redline binary.
#[test]
fn a_taken_address_is_a_failed_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let out = Command::new(env!("CARGO_BIN_EXE_redline-ratelimit"))
        .args(["--listen", &addr.to_string()])
        .output()
        .expect("service binary");
    assert_eq!(out.status.code(), Some(69));
}
