//! Algorithms: Redis against the reference model, documented bounds, and concurrency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fred::interfaces::ClientLike;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use redline_proto::redline::ratelimit::v1 as pb;
use redline_ratelimit::limits::Algorithm;
use redline_ratelimit::store::memory::MemoryStore;
use redline_ratelimit::store::model::emission_interval_us;
use redline_ratelimit::store::redis::{RedisStore, TimeMode, connect};
use redline_ratelimit::store::{Apply, BatchItem, Store};

use crate::fixture::{Redis, Service, spec};

const ALGORITHMS: [Algorithm; 3] = [
    Algorithm::FixedWindow,
    Algorithm::SlidingWindow,
    Algorithm::Gcra,
];

#[derive(Debug, Clone)]
struct Case {
    algorithm: Algorithm,
    limits: Vec<(u64, u64, bool)>,
    ops: Vec<(u64, u64, bool)>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        0..3usize,
        proptest::collection::vec(
            (
                1u64..12,
                prop_oneof![Just(1_000u64), Just(2_000), Just(5_000)],
                proptest::bool::weighted(0.2),
            ),
            1..4,
        ),
        proptest::collection::vec(
            (0u64..1_500_000, 0u64..6, proptest::bool::weighted(0.15)),
            1..50,
        ),
    )
        .prop_map(|(a, limits, ops)| Case {
            algorithm: ALGORITHMS[a],
            limits,
            ops,
        })
}

/// Every verdict Redis gives (script, client-time mode) equals the reference model's, decision by decision:
/// random arrival times (µs resolution), costs (including 0 and more than the limit), several limits per
/// batch, shadow limits and dry runs.
#[test]
fn redis_matches_the_reference_model() {
    let redis = Redis::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let clock = Arc::new(AtomicU64::new(0));
    let store = rt.block_on(async {
        let client = connect(&redis.url(), Duration::from_secs(2)).unwrap();
        client.wait_for_connect().await.unwrap();
        let c = clock.clone();
        RedisStore::new(client, TimeMode::Client, Duration::from_secs(2))
            .with_clock(Arc::new(move || c.load(Ordering::SeqCst)))
    });
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let round = AtomicU64::new(0);
    runner
        .run(&case(), |case| {
            let round = round.fetch_add(1, Ordering::SeqCst) + 1;
            let model = MemoryStore::new(10_000);
            let items: Vec<BatchItem> = case
                .limits
                .iter()
                .enumerate()
                .map(|(i, (limit, window, shadow))| BatchItem {
                    key: format!("model:{{r{round}}}:{i}"),
                    algorithm: case.algorithm,
                    limit: *limit,
                    window_ms: *window,
                    cost: 0,
                    shadow: *shadow,
                })
                .collect();
            // An arbitrary epoch offset, so window alignment differs between cases.
            let mut now = 1_700_000_000_000_000 + round * 7_777_777;
            for (step, (dt, cost, dry)) in case.ops.iter().enumerate() {
                now += dt;
                clock.store(now, Ordering::SeqCst);
                let batch: Vec<BatchItem> = items
                    .iter()
                    .map(|i| BatchItem {
                        cost: *cost,
                        ..i.clone()
                    })
                    .collect();
                let apply = if *dry { Apply::DryRun } else { Apply::Consume };
                let expected = model.decide_at(&batch, apply, now);
                let actual = rt.block_on(store.decide(&batch, apply)).unwrap();
                prop_assert_eq!(&actual, &expected, "step {} of {:?}", step, case);
            }
            Ok(())
        })
        .unwrap();
}

fn arrivals() -> impl Strategy<Value = Vec<(u64, u64)>> {
    proptest::collection::vec((0u64..400_000, 1u64..4), 1..300)
}

/// Runs single-limit requests through the model; returns (time µs, cost) of admitted ones.
fn admitted(
    algorithm: Algorithm,
    limit: u64,
    window_ms: u64,
    arrivals: &[(u64, u64)],
) -> Vec<(u64, u64)> {
    let store = MemoryStore::new(16);
    let mut now = 1_700_000_000_000_000u64;
    let mut out = Vec::new();
    for (dt, cost) in arrivals {
        now += dt;
        let item = BatchItem {
            key: "k".to_owned(),
            algorithm,
            limit,
            window_ms,
            cost: *cost,
            shadow: false,
        };
        if store.decide_at(&[item], Apply::Consume, now).allowed {
            out.push((now, *cost));
        }
    }
    out
}

/// Largest admitted cost in any interval of `span_us` (closed on the left, open on the right).
fn max_in_span(admitted: &[(u64, u64)], span_us: u64) -> u64 {
    let mut best = 0;
    for (i, (start, _)) in admitted.iter().enumerate() {
        let total: u64 = admitted[i..]
            .iter()
            .take_while(|(t, _)| *t < start + span_us)
            .map(|(_, c)| c)
            .sum();
        best = best.max(total);
    }
    best
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    /// Fixed window: at most `limit` per window, so at most 2 × limit in any span of one window (the boundary
    /// burst), and the first request that fits is always admitted.
    #[test]
    fn fixed_window_bound(limit in 1u64..20, arrivals in arrivals()) {
        let window = 1_000;
        let got = admitted(Algorithm::FixedWindow, limit, window, &arrivals);
        prop_assert!(max_in_span(&got, window * 1000) <= 2 * limit);
        prop_assert_eq!(got.first().map(|a| a.0).is_some(), arrivals.iter().any(|(_, c)| *c <= limit));
    }

    /// Sliding window counter: at most 2 × limit in any span of one window (the documented worst case of the
    /// approximation).
    #[test]
    fn sliding_window_bound(limit in 1u64..20, arrivals in arrivals()) {
        let window = 1_000;
        let got = admitted(Algorithm::SlidingWindow, limit, window, &arrivals);
        prop_assert!(max_in_span(&got, window * 1000) <= 2 * limit);
    }

    /// GCRA: in any span `t`, at most `limit + t / T` (burst plus refill), with T the emission interval.
    #[test]
    fn gcra_bound(limit in 1u64..20, arrivals in arrivals()) {
        let window = 1_000;
        let interval = emission_interval_us(limit, window);
        let got = admitted(Algorithm::Gcra, limit, window, &arrivals);
        for span in [interval, window * 500, window * 1000, window * 3000] {
            prop_assert!(max_in_span(&got, span) <= limit + span / interval);
        }
    }
}

/// 32 clients × 10 calls each on one key with a limit of 100: exactly 100 are admitted, for every algorithm
/// (windows of a day, so no refill happens during the test). The decision timeout is raised because this test
/// is about atomicity, not latency, and runs beside the others on a small machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_clients_never_over_admit() {
    let redis = Redis::start();
    let service = Service::start(&redis.url(), &["--timeout-ms", "2000"]).await;
    for algorithm in [
        pb::Algorithm::FixedWindow,
        pb::Algorithm::SlidingWindow,
        pb::Algorithm::Gcra,
    ] {
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let mut client = service.client().await;
            tasks.push(tokio::spawn(async move {
                let mut admitted = 0u32;
                for _ in 0..10 {
                    let r = client
                        .check(pb::CheckRequest {
                            key: format!("shared-{}", algorithm as i32),
                            limits: vec![spec(
                                "daily",
                                100,
                                Duration::from_secs(86_400),
                                algorithm,
                            )],
                            ..Default::default()
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    admitted += u32::from(r.allowed);
                }
                admitted
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        assert_eq!(total, 100, "{algorithm:?}");
    }
    service.stop().await;
}
