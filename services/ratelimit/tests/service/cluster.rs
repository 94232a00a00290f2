//! Redis Cluster: every script call stays within one slot, and a request whose limits span slots is still
//! decided all-or-nothing.

use std::time::Duration;

use redline_proto::redline::ratelimit::v1 as pb;
use redline_ratelimit::limits::{Algorithm, FailureMode, LimitDef, Mode};
use redline_ratelimit::store::keys::{KeySpace, hash_tag};

use redline_testkit::RedisCluster;

use crate::fixture::{Service, spec};

/// The slot of a client's counters in domain `web` (the prefix is outside the hash tag).
fn slot_of(client: &str) -> u16 {
    let limit = LimitDef {
        name: String::new(),
        limit: 1,
        window_ms: 60_000,
        algorithm: Algorithm::FixedWindow,
        failure_mode: FailureMode::Error,
        mode: Mode::Enforced,
    };
    let key = KeySpace::new("any")
        .and_then(|k| k.counter("web", &[("client".to_owned(), client.to_owned())], &limit))
        .expect("key");
    fred::util::redis_keyslot(hash_tag(&key).expect("tag").as_bytes())
}

fn descriptor(client: &str, limits: Vec<pb::LimitSpec>) -> pb::Descriptor {
    pb::Descriptor {
        entries: vec![pb::Entry {
            key: "client".to_owned(),
            value: client.to_owned(),
        }],
        limits,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_spanning_cluster_slots_are_decided_all_or_nothing() {
    let cluster = RedisCluster::start();
    // Two clients whose counters live on different primaries (slots 0–5460 and 10923–16383 of three).
    let low = (0..1000)
        .map(|i| format!("a{i}"))
        .find(|c| slot_of(c) < 5000)
        .expect("a low slot");
    let high = (0..1000)
        .map(|i| format!("b{i}"))
        .find(|c| slot_of(c) > 11_500)
        .expect("a high slot");
    let service = Service::start(&cluster.url(), &[]).await;
    let mut client = service.client().await;
    let minute = Duration::from_secs(60);
    let request = |dry_run| pb::CheckRequest {
        domain: "web".to_owned(),
        descriptors: vec![
            descriptor(
                &low,
                vec![spec("wide", 10, minute, pb::Algorithm::FixedWindow)],
            ),
            descriptor(&high, vec![spec("narrow", 2, minute, pb::Algorithm::Gcra)]),
        ],
        dry_run,
        ..Default::default()
    };
    for remaining in [(9, 1), (8, 0)] {
        let r = client
            .check(request(false))
            .await
            .expect("check")
            .into_inner();
        assert!(r.allowed, "{r:?}");
        assert!(!r.degraded, "decided by Redis, not a failure mode: {r:?}");
        assert_eq!((r.limits[0].remaining, r.limits[1].remaining), remaining);
    }
    // The narrow limit on the other primary refuses: the wide one consumes nothing.
    for _ in 0..3 {
        let r = client
            .check(request(false))
            .await
            .expect("check")
            .into_inner();
        assert!(!r.allowed);
        assert!(!r.degraded, "{r:?}");
        assert_eq!(r.refused_by, "narrow");
        assert_eq!(r.limits[0].remaining, 8, "{r:?}");
    }
    // Forgiving both clients in one call deletes counters on both primaries.
    let both = request(false);
    let reset = client
        .reset_key(pb::ResetKeyRequest {
            domain: both.domain,
            descriptors: both.descriptors,
            ..Default::default()
        })
        .await
        .expect("reset")
        .into_inner();
    assert_eq!(reset.removed, 2, "{reset:?}");
    let r = client
        .check(request(true))
        .await
        .expect("check")
        .into_inner();
    assert!(r.allowed);
    assert_eq!((r.limits[0].remaining, r.limits[1].remaining), (9, 1));
    service.stop().await;
}
