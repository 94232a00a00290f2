//! The redline API: atomic multi-limit decisions, rules, administration and bad input.

use std::time::Duration;

use redline_proto::redline::ratelimit::v1 as pb;
use tonic::Code;

use redline_testkit::RedisServer;

use crate::fixture::{Service, descriptor, rule_file, spec};

const RULES: &str = r#"
domain: web
descriptors:
  - key: remote_address
    limits: "200 per day; 50 per hour"
    descriptors:
      - key: path
        value: /login
        failure_mode: closed
        rate_limits:
          - {unit: second, unit_multiplier: 30, requests_per_unit: 3, name: login-30s}
  - key: api_key
    rate_limit: {unit: minute, requests_per_unit: 2, name: global}
  - key: path
    value: /bulk
    rate_limit:
      unit: minute
      requests_per_unit: 5
      name: bulk
      replaces: [{name: global}]
  - key: tenant
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1, name: tenant-shadow}
"#;

async fn check(
    client: &mut pb::rate_limit_service_client::RateLimitServiceClient<tonic::transport::Channel>,
    request: pb::CheckRequest,
) -> pb::CheckResponse {
    client.check(request).await.unwrap().into_inner()
}

#[tokio::test]
async fn a_refused_request_consumes_nothing_from_its_other_limits() {
    let redis = RedisServer::start();
    let service = Service::start(&redis.url(), &[]).await;
    let mut client = service.client().await;
    let request = |cost| pb::CheckRequest {
        key: "client-1".to_owned(),
        limits: vec![
            spec(
                "wide",
                10,
                Duration::from_secs(60),
                pb::Algorithm::FixedWindow,
            ),
            spec("narrow", 2, Duration::from_secs(60), pb::Algorithm::Gcra),
            spec(
                "smooth",
                10,
                Duration::from_secs(60),
                pb::Algorithm::SlidingWindow,
            ),
        ],
        cost,
        ..Default::default()
    };
    let first = check(&mut client, request(2)).await;
    assert!(first.allowed);
    assert_eq!(
        first.limits.iter().map(|l| l.remaining).collect::<Vec<_>>(),
        vec![8, 0, 8]
    );
    for _ in 0..5 {
        let refused = check(&mut client, request(1)).await;
        assert!(!refused.allowed);
        assert_eq!(refused.refused_by, "narrow");
        assert!(refused.retry_after.is_some());
        let narrow = &refused.limits[1];
        assert!(narrow.refused);
        assert_eq!(narrow.limit, 2);
        assert_eq!(narrow.window.unwrap().seconds, 60);
        // The other limits report their untouched quota.
        assert_eq!(refused.limits[0].remaining, 8);
        assert_eq!(refused.limits[2].remaining, 8);
    }
    let inspect = client
        .inspect_key(pb::InspectKeyRequest {
            key: "client-1".to_owned(),
            limits: request(1).limits,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        inspect
            .limits
            .iter()
            .map(|l| l.remaining)
            .collect::<Vec<_>>(),
        vec![8, 0, 8]
    );
    service.stop().await;
}

/// A caller's own limits can be shadow or quota limits, with the rule file's meaning: a shadow limit reports
/// and never refuses; quotas refuse only once every one of them is spent.
#[tokio::test]
async fn caller_supplied_limits_take_shadow_and_quota_modes() {
    let redis = RedisServer::start();
    let service = Service::start(&redis.url(), &[]).await;
    let mut client = service.client().await;
    let minute = Duration::from_secs(60);
    let limit = |name: &str, n: u64, shadow: bool, quota: bool| pb::LimitSpec {
        shadow_mode: shadow,
        quota_mode: quota,
        ..spec(name, n, minute, pb::Algorithm::FixedWindow)
    };
    let request = || pb::CheckRequest {
        key: "modes".to_owned(),
        limits: vec![
            limit("trial", 1, true, false),
            limit("quota-a", 1, false, true),
            limit("quota-b", 2, false, true),
            // Both flags: shadow wins.
            limit("both", 1, true, true),
        ],
        ..Default::default()
    };
    let flags = |r: &pb::CheckResponse| {
        r.limits
            .iter()
            .map(|l| (l.shadow_mode, l.quota_mode, l.refused))
            .collect::<Vec<_>>()
    };

    let first = check(&mut client, request()).await;
    assert!(first.allowed);
    // The second request: the trial limit and quota-a are over, quota-b has room, so it passes.
    let second = check(&mut client, request()).await;
    assert!(second.allowed, "{second:?}");
    assert_eq!(
        flags(&second),
        vec![
            (true, false, true),
            (false, true, true),
            (false, true, false),
            (true, false, true)
        ]
    );
    // The third: every quota is spent, so it is refused.
    let third = check(&mut client, request()).await;
    assert!(!third.allowed, "{third:?}");
    assert!(third.limits[1].refused && third.limits[2].refused);
    service.stop().await;
}

#[tokio::test]
async fn dry_run_reports_without_consuming_and_reset_forgives() {
    let redis = RedisServer::start();
    let service = Service::start(&redis.url(), &[]).await;
    let mut client = service.client().await;
    let request = |dry_run| pb::CheckRequest {
        key: "login:alice".to_owned(),
        limit_expression: "3 per minute".to_owned(),
        dry_run,
        ..Default::default()
    };
    for _ in 0..5 {
        let dry = check(&mut client, request(true)).await;
        assert!(dry.allowed);
        assert_eq!(dry.limits[0].remaining, 2);
    }
    for expected in [true, true, true, false] {
        assert_eq!(check(&mut client, request(false)).await.allowed, expected);
    }
    let reset = client
        .reset_key(pb::ResetKeyRequest {
            key: "login:alice".to_owned(),
            limit_expression: "3 per minute".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reset.removed, 1);
    assert!(check(&mut client, request(false)).await.allowed);
    service.stop().await;
}

/// envoyproxy/ratelimit's `share_threshold`: every value matching the wildcard draws on one counter; without
/// it, each value has its own.
#[tokio::test]
async fn share_threshold_wildcards_share_one_counter() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = rule_file(
        dir.path(),
        r#"
domain: files
descriptors:
  - key: path
    value: /api/*
    share_threshold: true
    rate_limit: {unit: minute, requests_per_unit: 3, name: api-shared}
  - key: path
    value: /files/*
    rate_limit: {unit: minute, requests_per_unit: 3, name: per-file}
"#,
    );
    let service = Service::start(&redis.url(), &["--config", path.to_str().unwrap()]).await;
    let mut client = service.client().await;
    let request = |value: &str| pb::CheckRequest {
        domain: "files".to_owned(),
        descriptors: vec![descriptor(&[("path", value)])],
        ..Default::default()
    };
    let mut remaining = Vec::new();
    for value in ["/api/a", "/api/b", "/api/c", "/api/d"] {
        let r = check(&mut client, request(value)).await;
        remaining.push((r.allowed, r.limits[0].remaining));
    }
    assert_eq!(
        remaining,
        [(true, 2), (true, 1), (true, 0), (false, 0)],
        "one counter for every /api/* value"
    );
    for value in ["/files/a", "/files/b", "/files/c", "/files/d"] {
        let r = check(&mut client, request(value)).await;
        assert!(r.allowed, "each /files/* value has its own counter: {r:?}");
        assert_eq!(r.limits[0].remaining, 2);
    }
    service.stop().await;
}

#[tokio::test]
async fn rules_apply_with_multipliers_shadow_mode_and_replaces() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = rule_file(dir.path(), RULES);
    let service = Service::start(&redis.url(), &["--config", path.to_str().unwrap()]).await;
    let mut client = service.client().await;

    // Flask-Limiter defaults plus a 3 per 30 s login limit, all in one decision.
    let login = || pb::CheckRequest {
        domain: "web".to_owned(),
        descriptors: vec![
            descriptor(&[("remote_address", "10.0.0.1")]),
            descriptor(&[("remote_address", "10.0.0.1"), ("path", "/login")]),
        ],
        ..Default::default()
    };
    let first = check(&mut client, login()).await;
    assert!(first.allowed);
    let names: Vec<_> = first.limits.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["200 per day", "50 per hour", "login-30s"]);
    assert_eq!(first.limits[2].window.unwrap().seconds, 30);
    assert_eq!(first.limits[0].remaining, 199);
    check(&mut client, login()).await;
    check(&mut client, login()).await;
    let refused = check(&mut client, login()).await;
    assert!(!refused.allowed);
    assert_eq!(refused.refused_by, "login-30s");
    assert_eq!(
        refused.limits[0].remaining, 197,
        "the daily limit kept its quota"
    );
    assert!(refused.retry_after.unwrap().seconds <= 30);

    // Shadow mode: counted and reported, never refused.
    for i in 0..3 {
        let r = check(
            &mut client,
            pb::CheckRequest {
                domain: "web".to_owned(),
                descriptors: vec![descriptor(&[("tenant", "acme")])],
                ..Default::default()
            },
        )
        .await;
        assert!(r.allowed);
        assert!(r.limits[0].shadow_mode);
        assert_eq!(r.limits[0].refused, i > 0);
    }

    // `replaces`: /bulk's limit replaces the 2 per minute "global" limit of the same request.
    let bulk = || pb::CheckRequest {
        domain: "web".to_owned(),
        descriptors: vec![
            descriptor(&[("api_key", "k1")]),
            descriptor(&[("path", "/bulk")]),
        ],
        ..Default::default()
    };
    for _ in 0..5 {
        let r = check(&mut client, bulk()).await;
        assert!(r.allowed);
        assert_eq!(r.limits.len(), 1);
        assert_eq!(r.limits[0].name, "bulk");
    }
    assert!(!check(&mut client, bulk()).await.allowed);

    let listed = client
        .list_rules(pb::ListRulesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.rules.len(), 6);
    assert!(
        listed
            .rules
            .iter()
            .any(|r| r.name == "bulk" && r.replaces == ["global"])
    );
    assert!(listed.store_available);
    service.stop().await;
}

#[tokio::test]
async fn rule_files_reload_and_invalid_ones_are_rejected() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = rule_file(
        dir.path(),
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 1}\n",
    );
    let service = Service::start(&redis.url(), &["--config", path.to_str().unwrap()]).await;
    let mut client = service.client().await;
    let request = || pb::CheckRequest {
        domain: "d".to_owned(),
        descriptors: vec![descriptor(&[("k", "v")])],
        ..Default::default()
    };
    assert_eq!(check(&mut client, request()).await.limits[0].limit, 1);

    // A broken file: ReloadConfig says why, and the previous rules stay in force.
    std::fs::write(&path, "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 5}\n").unwrap();
    let err = client
        .reload_config(pb::ReloadConfigRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("fortnight"), "{}", err.message());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(check(&mut client, request()).await.limits[0].limit, 1);

    // A valid file is picked up by the watcher without a restart.
    std::fs::write(&path, "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 7}\n").unwrap();
    let mut limit = 0;
    for _ in 0..50 {
        limit = check(&mut client, request()).await.limits[0].limit;
        if limit == 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(limit, 7);
    let reloaded = client
        .reload_config(pb::ReloadConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reloaded.rule_count, 1);
    service.stop().await;
}

#[tokio::test]
async fn bad_input_is_invalid_argument_never_a_panic() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = rule_file(
        dir.path(),
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 1}\n",
    );
    let service = Service::start(&redis.url(), &["--config", path.to_str().unwrap()]).await;
    let mut client = service.client().await;
    let long = "x".repeat(10_000);
    let cases = vec![
        (
            "no descriptors",
            pb::CheckRequest {
                domain: "d".to_owned(),
                ..Default::default()
            },
        ),
        (
            "empty descriptor",
            pb::CheckRequest {
                domain: "d".to_owned(),
                descriptors: vec![descriptor(&[])],
                ..Default::default()
            },
        ),
        (
            "unknown domain",
            pb::CheckRequest {
                domain: "nope".to_owned(),
                descriptors: vec![descriptor(&[("k", "v")])],
                ..Default::default()
            },
        ),
        (
            "absurd cost",
            pb::CheckRequest {
                domain: "d".to_owned(),
                descriptors: vec![descriptor(&[("k", "v")])],
                cost: u64::MAX,
                ..Default::default()
            },
        ),
        (
            "oversized value",
            pb::CheckRequest {
                domain: "d".to_owned(),
                descriptors: vec![descriptor(&[("k", &long)])],
                ..Default::default()
            },
        ),
        (
            "zero limit",
            pb::CheckRequest {
                key: "a".to_owned(),
                limits: vec![spec("z", 0, Duration::from_secs(1), pb::Algorithm::Gcra)],
                ..Default::default()
            },
        ),
        (
            "zero window",
            pb::CheckRequest {
                key: "a".to_owned(),
                limits: vec![spec("z", 1, Duration::ZERO, pb::Algorithm::Gcra)],
                ..Default::default()
            },
        ),
        (
            "malformed expression",
            pb::CheckRequest {
                key: "a".to_owned(),
                limit_expression: "lots per fortnight".to_owned(),
                ..Default::default()
            },
        ),
        (
            "limits without key",
            pb::CheckRequest {
                limit_expression: "1 per second".to_owned(),
                ..Default::default()
            },
        ),
        (
            "unknown algorithm",
            pb::CheckRequest {
                key: "a".to_owned(),
                limits: vec![pb::LimitSpec {
                    algorithm: 99,
                    ..spec("z", 1, Duration::from_secs(1), pb::Algorithm::Gcra)
                }],
                ..Default::default()
            },
        ),
    ];
    for (what, request) in cases {
        let err = client.check(request).await.unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{what}: {}",
            err.message()
        );
    }
    // The service is still healthy afterwards.
    let ok = check(
        &mut client,
        pb::CheckRequest {
            domain: "d".to_owned(),
            descriptors: vec![descriptor(&[("k", "v")])],
            ..Default::default()
        },
    )
    .await;
    assert!(ok.allowed);
    service.stop().await;
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let redis = RedisServer::start();
    let service = Service::start(&redis.url(), &[]).await;
    let mut health = HealthClient::new(
        tonic::transport::Channel::from_shared(service.endpoint.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    for name in [
        "liveness",
        "readiness",
        "redline.ratelimit.v1.RateLimitService",
    ] {
        let mut status = ServingStatus::Unknown;
        for _ in 0..50 {
            status = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: name.to_owned(),
                })
                .await
                .unwrap()
                .into_inner()
                .status();
            if status == ServingStatus::Serving {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(status, ServingStatus::Serving, "{name}");
    }
    service.stop().await;
}
