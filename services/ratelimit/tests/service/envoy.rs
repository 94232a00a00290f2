//! Envoy RLS v3 compatibility: wire layout, statuses, headers, and envoyproxy/ratelimit's documented examples.

use prost::Message;
use redline_proto::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use redline_proto::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use redline_proto::envoy::service::ratelimit::v3::rate_limit_response::{Code, rate_limit::Unit};
use redline_proto::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};

use redline_testkit::RedisServer;

use crate::fixture::{Service, rule_file};

/// Protobuf bytes written by hand from the field numbers of Envoy's `rls.proto` (not from our generated
/// types): domain=1, descriptors=2 (entries=1 {key=1, value=2}, limit=2 {requests_per_unit=1, unit=2},
/// hits_addend=3 UInt64Value{value=1}), hits_addend=3.
fn envoy_encoded_request() -> Vec<u8> {
    fn field(out: &mut Vec<u8>, number: u8, bytes: &[u8]) {
        out.push((number << 3) | 2);
        out.push(u8::try_from(bytes.len()).unwrap());
        out.extend_from_slice(bytes);
    }
    let mut entry = Vec::new();
    field(&mut entry, 1, b"remote_address");
    field(&mut entry, 2, b"10.1.1.1");
    let mut descriptor = Vec::new();
    field(&mut descriptor, 1, &entry);
    // RateLimitOverride { requests_per_unit: 3, unit: MINUTE (2) }
    field(&mut descriptor, 2, &[1 << 3, 3, 2 << 3, 2]);
    // UInt64Value { value: 2 }
    field(&mut descriptor, 3, &[1 << 3, 2]);
    let mut request = Vec::new();
    field(&mut request, 1, b"edge");
    field(&mut request, 2, &descriptor);
    request.extend_from_slice(&[3 << 3, 1]); // hits_addend = 1
    request
}

#[test]
fn envoy_wire_layout_decodes_field_by_field() {
    let request = RateLimitRequest::decode(envoy_encoded_request().as_slice()).unwrap();
    assert_eq!(request.domain, "edge");
    assert_eq!(request.hits_addend, 1);
    let d = &request.descriptors[0];
    assert_eq!(d.entries[0].key, "remote_address");
    assert_eq!(d.entries[0].value, "10.1.1.1");
    let limit = d.limit.as_ref().unwrap();
    assert_eq!((limit.requests_per_unit, limit.unit), (3, 2));
    assert_eq!(d.hits_addend, Some(2));
    // And back: our encoding is byte-identical to the hand-written one.
    assert_eq!(request.encode_to_vec(), envoy_encoded_request());
}

#[tokio::test]
async fn should_rate_limit_fills_statuses_and_headers() {
    let redis = RedisServer::start();
    let service = Service::start(&redis.url(), &[]).await;
    let mut envoy = service.envoy().await;
    let request = RateLimitRequest::decode(envoy_encoded_request().as_slice()).unwrap();

    let first = envoy
        .should_rate_limit(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.overall_code(), Code::Ok);
    let status = &first.statuses[0];
    assert_eq!(status.code(), Code::Ok);
    let limit = status.current_limit.as_ref().unwrap();
    assert_eq!((limit.requests_per_unit, limit.unit()), (3, Unit::Minute));
    assert_eq!(status.limit_remaining, 1, "2 hits of 3");
    let reset = status.duration_until_reset.unwrap();
    assert!(reset.seconds > 50 && reset.seconds <= 60, "{reset:?}");
    let header = |r: &RateLimitResponse, k: &str| {
        r.response_headers_to_add
            .iter()
            .find(|h| h.key == k)
            .map(|h| h.value.clone())
    };
    assert_eq!(
        header(&first, "x-ratelimit-limit").as_deref(),
        Some("3, 3;w=60")
    );
    assert_eq!(
        header(&first, "x-ratelimit-remaining").as_deref(),
        Some("1")
    );
    assert_eq!(header(&first, "x-ratelimit-reset").as_deref(), Some("60"));
    assert_eq!(header(&first, "retry-after"), None);

    let second = envoy.should_rate_limit(request).await.unwrap().into_inner();
    assert_eq!(second.overall_code(), Code::OverLimit);
    assert_eq!(second.statuses[0].code(), Code::OverLimit);
    assert_eq!(
        second.statuses[0].limit_remaining, 1,
        "refused hits consume nothing"
    );
    assert!(header(&second, "retry-after").is_some());

    // hits_addend 0 on a descriptor: check only.
    let peek = RateLimitRequest {
        domain: "edge".to_owned(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: "remote_address".to_owned(),
                value: "10.1.1.1".to_owned(),
            }],
            limit: Some(RateLimitOverride {
                requests_per_unit: 3,
                unit: 2,
            }),
            hits_addend: Some(0),
        }],
        hits_addend: 0,
    };
    let peeked = envoy.should_rate_limit(peek).await.unwrap().into_inner();
    assert_eq!(peeked.overall_code(), Code::Ok);
    assert_eq!(peeked.statuses[0].limit_remaining, 1);
    service.stop().await;
}

fn descriptor(pairs: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: pairs
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).to_owned(),
                value: (*v).to_owned(),
            })
            .collect(),
        limit: None,
        hits_addend: None,
    }
}

/// The configuration examples of envoyproxy/ratelimit's README (mongo_cps, messaging, edge_proxy_per_ip,
/// nested depth, replaces, shadow_mode), loaded as-is and checked against the behaviour it documents.
const EXAMPLES: &str = r#"
domain: mongo_cps
descriptors:
  - key: database
    value: users
    rate_limit:
      unit: second
      requests_per_unit: 500
  - key: database
    value: default
    rate_limit:
      unit: second
      requests_per_unit: 500
---
domain: messaging
descriptors:
  - key: message_type
    value: marketing
    descriptors:
      - key: to_number
        rate_limit:
          unit: day
          requests_per_unit: 5
  - key: to_number
    rate_limit:
      unit: day
      requests_per_unit: 100
---
domain: edge_proxy_per_ip
descriptors:
  - key: remote_address
    rate_limit:
      unit: second
      requests_per_unit: 10
  - key: remote_address
    value: 50.0.0.5
    rate_limit:
      unit: second
      requests_per_unit: 0
---
domain: example4
descriptors:
  - key: key
    value: value
    descriptors:
      - key: subkey
        value: subvalue
        rate_limit:
          requests_per_unit: 300
          unit: second
    rate_limit:
      requests_per_unit: 1
      unit: second
---
domain: example_replaces
descriptors:
  - key: remote_address
    rate_limit:
      name: global
      requests_per_unit: 10
      unit: hour
  - key: path
    value: /unlimited
    rate_limit:
      unlimited: true
  - key: path
    value: /special
    rate_limit:
      requests_per_unit: 20
      unit: hour
      replaces:
        - name: global
---
domain: example_shadow
descriptors:
  - key: remote_address
    shadow_mode: true
    detailed_metric: true
    rate_limit:
      unit: hour
      requests_per_unit: 1
"#;

#[tokio::test]
async fn envoyproxy_ratelimit_examples_behave_as_documented() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = rule_file(dir.path(), EXAMPLES);
    let service = Service::start(&redis.url(), &["--config", path.to_str().unwrap()]).await;
    let mut envoy = service.envoy().await;
    let mut ask = async |domain: &str, descriptors: Vec<RateLimitDescriptor>| {
        envoy
            .should_rate_limit(RateLimitRequest {
                domain: domain.to_owned(),
                descriptors,
                hits_addend: 0,
            })
            .await
            .unwrap()
            .into_inner()
    };

    let r = ask("mongo_cps", vec![descriptor(&[("database", "users")])]).await;
    assert_eq!(
        r.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        500
    );
    assert_eq!(
        r.statuses[0].current_limit.as_ref().unwrap().unit(),
        Unit::Second
    );
    // A database without a rule is not limited.
    let r = ask("mongo_cps", vec![descriptor(&[("database", "other")])]).await;
    assert_eq!(r.overall_code(), Code::Ok);
    assert!(r.statuses[0].current_limit.is_none());

    // Marketing messages: 5 per day per number; other numbers are counted separately.
    for _ in 0..5 {
        let r = ask(
            "messaging",
            vec![descriptor(&[
                ("message_type", "marketing"),
                ("to_number", "2061234567"),
            ])],
        )
        .await;
        assert_eq!(r.overall_code(), Code::Ok);
    }
    let r = ask(
        "messaging",
        vec![descriptor(&[
            ("message_type", "marketing"),
            ("to_number", "2061234567"),
        ])],
    )
    .await;
    assert_eq!(r.overall_code(), Code::OverLimit);
    let r = ask(
        "messaging",
        vec![descriptor(&[
            ("message_type", "marketing"),
            ("to_number", "2069999999"),
        ])],
    )
    .await;
    assert_eq!(r.overall_code(), Code::Ok);
    let r = ask(
        "messaging",
        vec![descriptor(&[("to_number", "2061234567")])],
    )
    .await;
    assert_eq!(
        r.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        100
    );

    // Per-IP limit, and a blacklisted IP with 0 requests per unit.
    let r = ask(
        "edge_proxy_per_ip",
        vec![descriptor(&[("remote_address", "10.0.0.1")])],
    )
    .await;
    assert_eq!(
        (r.overall_code(), r.statuses[0].limit_remaining),
        (Code::Ok, 9)
    );
    let r = ask(
        "edge_proxy_per_ip",
        vec![descriptor(&[("remote_address", "50.0.0.5")])],
    )
    .await;
    assert_eq!(r.overall_code(), Code::OverLimit);

    // Depth must match: (key=value) gets 1/s, (key=value, subkey=subvalue) 300/s.
    let r = ask("example4", vec![descriptor(&[("key", "value")])]).await;
    assert_eq!(
        r.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        1
    );
    let r = ask(
        "example4",
        vec![descriptor(&[("key", "value"), ("subkey", "subvalue")])],
    )
    .await;
    assert_eq!(
        r.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        300
    );
    let r = ask(
        "example4",
        vec![descriptor(&[("key", "value"), ("subkey", "other")])],
    )
    .await;
    assert!(r.statuses[0].current_limit.is_none());

    // `replaces` and `unlimited`.
    let r = ask(
        "example_replaces",
        vec![
            descriptor(&[("remote_address", "1.2.3.4")]),
            descriptor(&[("path", "/special")]),
        ],
    )
    .await;
    assert!(r.statuses[0].current_limit.is_none(), "global was replaced");
    assert_eq!(
        r.statuses[1]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        20
    );
    let r = ask(
        "example_replaces",
        vec![
            descriptor(&[("remote_address", "1.2.3.4")]),
            descriptor(&[("path", "/unlimited")]),
        ],
    )
    .await;
    assert_eq!(r.statuses[0].current_limit.as_ref().unwrap().name, "global");
    assert_eq!(r.statuses[1].limit_remaining, u32::MAX);

    // Shadow mode: over the limit, still OK.
    for _ in 0..3 {
        let r = ask(
            "example_shadow",
            vec![descriptor(&[("remote_address", "9.9.9.9")])],
        )
        .await;
        assert_eq!(r.overall_code(), Code::Ok);
        assert_eq!(r.statuses[0].code(), Code::Ok);
    }

    // Unknown domains are not limited, as in envoyproxy/ratelimit.
    let r = ask("unknown", vec![descriptor(&[("a", "b")])]).await;
    assert_eq!(r.overall_code(), Code::Ok);
    service.stop().await;
}

/// `quota_mode` as envoyproxy/ratelimit defines it: a spent quota does not refuse the request while another
/// quota-mode descriptor of it still has room, and is reported in `quotaModeViolations`; when every quota is
/// spent the request is refused; an enforced limit refuses whatever the quotas say.
#[tokio::test]
async fn quota_mode_refuses_only_when_every_quota_is_spent() {
    use prost_types::value::Kind;
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = rule_file(
        dir.path(),
        r"
domain: ai
descriptors:
  - key: backend
    value: provisioned
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: backend
    value: on_demand
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: backend
    value: spare
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: tenant
    rate_limit: {unit: minute, requests_per_unit: 4}
",
    );
    let service = Service::start(&redis.url(), &["--config", path.to_str().unwrap()]).await;
    let mut envoy = service.envoy().await;
    let mut ask = async |descriptors: Vec<RateLimitDescriptor>| {
        envoy
            .should_rate_limit(RateLimitRequest {
                domain: "ai".to_owned(),
                descriptors,
                hits_addend: 0,
            })
            .await
            .unwrap()
            .into_inner()
    };
    let both = || {
        vec![
            descriptor(&[("backend", "provisioned")]),
            descriptor(&[("backend", "on_demand")]),
        ]
    };
    let violations = |r: &RateLimitResponse| -> Vec<f64> {
        let metadata = r.dynamic_metadata.as_ref().expect("quota metadata");
        assert_eq!(
            metadata.fields["quotaModeEnabled"].kind,
            Some(Kind::BoolValue(true))
        );
        match metadata.fields.get("quotaModeViolations").map(|v| &v.kind) {
            Some(Some(Kind::ListValue(list))) => list
                .values
                .iter()
                .map(|v| match v.kind {
                    Some(Kind::NumberValue(n)) => n,
                    ref other => panic!("{other:?}"),
                })
                .collect(),
            None => Vec::new(),
            other => panic!("{other:?}"),
        }
    };

    // Both quotas have room.
    let r = ask(both()).await;
    assert_eq!(r.overall_code(), Code::Ok);
    assert!(violations(&r).is_empty());
    // The provisioned quota (1) is spent, the on-demand one (2) is not: admitted, and the spent one reported.
    let r = ask(both()).await;
    assert_eq!(r.overall_code(), Code::Ok);
    assert_eq!(
        (r.statuses[0].code(), r.statuses[1].code()),
        (Code::Ok, Code::Ok)
    );
    assert_eq!(violations(&r), vec![0.0]);
    assert_eq!(r.statuses[1].limit_remaining, 0, "on-demand consumed");
    // Every quota spent: refused, and both descriptors say so.
    let r = ask(both()).await;
    assert_eq!(r.overall_code(), Code::OverLimit);
    assert_eq!(
        (r.statuses[0].code(), r.statuses[1].code()),
        (Code::OverLimit, Code::OverLimit)
    );
    // A single quota-mode descriptor is enforced once spent.
    let r = ask(vec![descriptor(&[("backend", "provisioned")])]).await;
    assert_eq!(r.overall_code(), Code::OverLimit);

    // An enforced limit refuses even while a quota has room; the quota then consumes nothing.
    let tenant = || descriptor(&[("tenant", "t1")]);
    for _ in 0..4 {
        assert_eq!(ask(vec![tenant()]).await.overall_code(), Code::Ok);
    }
    let spare = || descriptor(&[("backend", "spare")]);
    let r = ask(vec![tenant(), spare()]).await;
    assert_eq!(r.overall_code(), Code::OverLimit);
    assert_eq!(
        (r.statuses[0].code(), r.statuses[1].code()),
        (Code::OverLimit, Code::Ok)
    );
    let r = ask(vec![spare()]).await;
    assert_eq!(
        r.statuses[0].limit_remaining, 4,
        "the refused request took nothing"
    );
    // Requests without quota-mode limits carry no metadata.
    assert!(
        ask(vec![tenant()]).await.dynamic_metadata.is_none(),
        "no quota, no metadata"
    );
    service.stop().await;
}
