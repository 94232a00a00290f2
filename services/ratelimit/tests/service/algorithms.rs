//! Algorithms: Redis against the reference model, documented bounds, and concurrency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fred::interfaces::{ClientLike, KeysInterface};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use redline_proto::redline::ratelimit::v1 as pb;
use redline_ratelimit::limits::{Algorithm, Mode};
use redline_ratelimit::store::memory::MemoryStore;
use redline_ratelimit::store::model::emission_interval_us;
use redline_ratelimit::store::redis::{RedisStore, TimeMode, connect};
use redline_ratelimit::store::{Apply, BatchItem, Store, StoreError};

use redline_testkit::RedisServer;

use crate::fixture::{Service, spec};

const ALGORITHMS: [Algorithm; 3] = [
    Algorithm::FixedWindow,
    Algorithm::SlidingWindow,
    Algorithm::Gcra,
];

#[derive(Debug, Clone)]
struct Case {
    algorithm: Algorithm,
    limits: Vec<(u64, u64, Mode)>,
    ops: Vec<(u64, u64, bool)>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        0..3usize,
        proptest::collection::vec(
            (
                1u64..12,
                prop_oneof![Just(1_000u64), Just(2_000), Just(5_000)],
                prop_oneof![
                    6 => Just(Mode::Enforced),
                    1 => Just(Mode::Shadow),
                    2 => Just(Mode::Quota)
                ],
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

/// A private redis-server, a current-thread runtime, and a client connected on it.
fn private_redis() -> (RedisServer, tokio::runtime::Runtime, fred::clients::Client) {
    let redis = RedisServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(async {
        let client = connect(&redis.url(), Duration::from_secs(2)).unwrap();
        client.wait_for_connect().await.unwrap();
        client
    });
    (redis, rt, client)
}

/// Every verdict Redis gives (script, client-time mode) equals the reference model's, decision by decision:
/// random arrival times (µs resolution), costs (including 0 and more than the limit), several limits per
/// batch, shadow and quota-mode limits, and dry runs.
#[test]
fn redis_matches_the_reference_model() {
    let (_redis, rt, client) = private_redis();
    let clock = Arc::new(AtomicU64::new(0));
    let store = rt.block_on(async {
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
                .map(|(i, (limit, window, mode))| BatchItem {
                    key: format!("model:{{r{round}}}:{i}"),
                    algorithm: case.algorithm,
                    limit: *limit,
                    window_ms: *window,
                    cost: 0,
                    mode: *mode,
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

/// Decisions that arrive together share one script call, and each is still decided on its own and in order:
/// a counter key holding a foreign type fails only its own decision.
#[test]
fn concurrent_decisions_share_one_call_and_fail_alone() {
    let (_redis, rt, client) = private_redis();
    rt.block_on(async {
        let store = RedisStore::new(client.clone(), TimeMode::Redis, Duration::from_secs(2));
        assert!(store.warm_up(Duration::from_secs(2)).await);
        // A string where a fixed-window counter (a hash) belongs.
        let _: () = client
            .set("batch:{bad}:0", "x", None, None, false)
            .await
            .unwrap();
        let item = |key: String| BatchItem {
            key,
            algorithm: Algorithm::FixedWindow,
            limit: 10,
            window_ms: 60_000,
            cost: 1,
            mode: Mode::Enforced,
        };
        let mut batches: Vec<Vec<BatchItem>> = (0..20)
            .map(|i| vec![item(format!("batch:{{c{}}}:0", i % 4))])
            .collect();
        batches.insert(10, vec![item("batch:{bad}:0".to_owned())]);
        let before = evalsha_calls(&client).await;
        let answers =
            futures::future::join_all(batches.iter().map(|b| store.decide(b, Apply::Consume)))
                .await;
        assert_eq!(evalsha_calls(&client).await - before, 1, "one script call");
        assert!(
            matches!(answers[10], Err(StoreError::Protocol(_))),
            "{:?}",
            answers[10]
        );
        let good: Vec<_> = answers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 10)
            .map(|(_, a)| a.as_ref().unwrap())
            .collect();
        // Four counters, five decisions each, applied in arrival order.
        for (i, outcome) in good.iter().enumerate() {
            assert!(outcome.allowed);
            assert_eq!(
                outcome.verdicts[0].remaining,
                10 - (i / 4 + 1) as u64,
                "decision {i}"
            );
        }
    });
}

/// Every counter carries a TTL that outlasts its state by a second, so abandoned clients leave nothing behind:
/// set when a window starts (fixed and sliding windows) or with each write (GCRA).
#[test]
fn counters_expire_once_their_state_stops_mattering() {
    let (_redis, rt, client) = private_redis();
    rt.block_on(async {
        let clock = Arc::new(AtomicU64::new(1_700_000_000_000_000));
        let c = clock.clone();
        let store = RedisStore::new(client.clone(), TimeMode::Client, Duration::from_secs(2))
            .with_clock(Arc::new(move || c.load(Ordering::SeqCst)));
        // Limit 10 per 10 s; the clock starts on a window boundary. Expected TTL ranges (ms), per algorithm:
        // fixed: window + 1 s; sliding: two windows + 1 s; GCRA: the backlog of three 1 s emission intervals
        // + 1 ms + 1 s.
        let cases = [
            (Algorithm::FixedWindow, 10_000..=11_000),
            (Algorithm::SlidingWindow, 20_000..=21_000),
            (Algorithm::Gcra, 3_000..=4_001),
        ];
        for (algorithm, expected) in cases {
            let key = format!("ttl:{{{algorithm:?}}}:0");
            let item = BatchItem {
                key: key.clone(),
                algorithm,
                limit: 10,
                window_ms: 10_000,
                cost: 1,
                mode: Mode::Enforced,
            };
            for window in 0..3 {
                // Several decisions in the window, then on to the next one.
                for _ in 0..3 {
                    let outcome = store
                        .decide(std::slice::from_ref(&item), Apply::Consume)
                        .await
                        .unwrap();
                    assert!(outcome.allowed);
                }
                let ttl: i64 = client.pttl(&key).await.unwrap();
                assert!(
                    expected.contains(&ttl),
                    "{algorithm:?} window {window}: ttl {ttl} ms, expected {expected:?}"
                );
                clock.fetch_add(10_000_000, Ordering::SeqCst);
            }
        }
    });
}

async fn evalsha_calls(client: &fred::clients::Client) -> u64 {
    let info: String = client
        .info(Some(fred::types::InfoKind::CommandStats))
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
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
            mode: Mode::Enforced,
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
    let redis = RedisServer::start();
    let service = Service::start(&redis.url(), &["--timeout", "2000ms"]).await;
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
