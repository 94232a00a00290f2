//! The shared store: decisions coalesced into `EVALSHA` calls of [`scripts::DECIDE`] (per slot on Redis
//! Cluster).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fred::prelude::*;
use fred::types::config::{ConnectionConfig, PerformanceConfig, ReconnectPolicy};
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use super::{
    Apply, BatchItem, BatchOutcome, Elsewhere, Store, StoreError, Verdict, admits, scripts,
};
use crate::limits::Mode;

/// Where the scripts take the current time from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeMode {
    /// Redis `TIME` inside the script: one clock for every instance (default).
    Redis,
    /// This process's clock, passed as an argument, for managed Redis that rejects `TIME` in scripts.
    /// Instances must then be kept in sync (NTP); skew shifts windows by the skew.
    Client,
}

/// Most decisions coalesced into one script call. It bounds how long one call holds Redis (a few µs per
/// decision) and the size of its reply.
const MAX_BATCH_DECISIONS: usize = 64;
/// Most counter keys in one script call.
const MAX_BATCH_KEYS: usize = 256;
/// Decisions waiting for the coalescer. When Redis stalls, a full queue fails new decisions at once (their
/// failure modes apply) instead of piling up work that would only run after their callers gave up.
const QUEUE_CAPACITY: usize = 4096;

/// Counters in Redis.
///
/// Decisions do not each send their own script call: they queue for one coalescing task, which sends every
/// decision that is waiting as one call of [`scripts::DECIDE`] and then waits for its answer before sending
/// the next (per slot on a cluster). At low load a call carries one decision and adds no wait; under load,
/// decisions arriving during a round trip share the next call, so Redis (single-threaded, and shared by every
/// instance of the service) spends its per-call cost once per batch instead of once per decision.
/// envoyproxy/ratelimit pipelines for the same reason; a script per batch goes further, since a pipeline
/// still costs Redis one command per decision.
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
    queue: mpsc::Sender<Pending>,
}

/// What the store and its coalescing task share.
struct Shared {
    client: Client,
    // SHA1 of the script as Redis reports it on first load (SHA1 is deterministic, so it never changes).
    sha: OnceLock<String>,
    time_mode: TimeMode,
    options: Options,
    clock: OnceLock<Arc<dyn Fn() -> u64 + Send + Sync>>,
}

/// One decision waiting for a script call: its keys, its arguments (consume flag, limit count, five per limit),
/// and where its answer goes.
struct Pending {
    keys: Vec<Key>,
    args: Vec<Value>,
    limits: usize,
    /// Hash slot of the keys (all of them share one), for grouping on a cluster.
    slot: u16,
    reply: oneshot::Sender<Result<BatchOutcome, StoreError>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("time_mode", &self.shared.time_mode)
            .finish_non_exhaustive()
    }
}

/// Builds a client that fails fast while Redis is away and reconnects by itself.
///
/// Commands are not queued or retried across reconnections: a decision that cannot be made now is worth
/// nothing later, and queued commands would replay stale hits. The per-command timeout equals the decision
/// timeout, and the reconnect policy retries forever with a short constant delay.
pub fn connect(url: &str, timeout: Duration) -> Result<Client, fred::error::Error> {
    let mut config = Config::from_url(url)?;
    // Start even when Redis is down: the failure modes cover that, and the client keeps reconnecting.
    config.fail_fast = false;
    let client = Builder::from_config(config)
        .set_policy(ReconnectPolicy::new_constant(0, 200))
        .set_connection_config(ConnectionConfig {
            connection_timeout: Duration::from_millis(500),
            internal_command_timeout: Duration::from_millis(500),
            max_command_attempts: 1,
            ..ConnectionConfig::default()
        })
        .set_performance_config(PerformanceConfig {
            default_command_timeout: timeout,
            ..PerformanceConfig::default()
        })
        .build()?;
    client.connect();
    Ok(client)
}

impl RedisStore {
    /// A store over a connected (or connecting) client. Spawns the coalescing task on the current runtime; it
    /// ends when the last clone of the store is dropped.
    pub fn new(client: Client, time_mode: TimeMode, timeout: Duration) -> Self {
        let shared = Arc::new(Shared {
            client,
            sha: OnceLock::new(),
            time_mode,
            options: Options {
                timeout: Some(timeout),
                fail_fast: true,
                max_attempts: Some(1),
                ..Options::default()
            },
            clock: OnceLock::new(),
        });
        let (queue, waiting) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(coalesce(shared.clone(), waiting));
        Self { shared, queue }
    }

    /// Replaces the process clock used in [`TimeMode::Client`] (tests drive time explicitly). Returns µs. Only
    /// the first clock given counts.
    pub fn with_clock(self, clock: Arc<dyn Fn() -> u64 + Send + Sync>) -> Self {
        let _ = self.shared.clock.set(clock);
        self
    }

    /// The client, for health probes.
    pub fn client(&self) -> &Client {
        &self.shared.client
    }

    /// Waits (at most `within`) until the client is connected and the decision script is loaded, so the first
    /// decisions after start-up come from Redis instead of spending their budget on the connection. False
    /// when Redis did not answer in time; the service then starts anyway and the failure modes apply.
    pub async fn warm_up(&self, within: Duration) -> bool {
        let ready = async {
            self.shared.client.wait_for_connect().await.ok()?;
            let client = self.shared.client.with_options(&Options {
                timeout: Some(within),
                ..Options::default()
            });
            self.shared.load(&client).await.ok()
        };
        matches!(tokio::time::timeout(within, ready).await, Ok(Some(_)))
    }

    /// Whether Redis answers `PING` within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> bool {
        if !self.shared.client.is_connected() {
            return false;
        }
        let ping = self.shared.client.ping::<String>(None);
        matches!(tokio::time::timeout(timeout, ping).await, Ok(Ok(_)))
    }

    /// Decides a batch: one script call on a single Redis, or on a cluster when the batch's keys share a slot
    /// (always, for the limits of one client: see [`super::keys`]); else one call per slot in two phases.
    ///
    /// Across slots no single script sees every counter, so the batch is first run as a dry run in each slot;
    /// only when the dry runs admit it is it run for real. A refusal in the dry run consumes nothing anywhere,
    /// as in one slot. The bound this leaves: a concurrent request may take the last units of one slot
    /// between the two phases; the second phase then refuses in that slot after the other slots consumed.
    /// Quota-mode limits are settled across slots here, from the dry runs' verdicts, so each slot runs them
    /// as shadow limits (counted when they have room, never refusing on their own).
    async fn run(&self, items: &[BatchItem], apply: Apply) -> Result<BatchOutcome, StoreError> {
        if !self.shared.client.is_connected() {
            return Err(StoreError::Unavailable("not connected".to_owned()));
        }
        if !self.shared.client.is_clustered() {
            return self.run_in_slot(items, apply).await;
        }
        let mut slots: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (i, item) in items.iter().enumerate() {
            let slot = fred::util::redis_keyslot(item.key.as_bytes());
            slots.entry(slot).or_default().push(i);
        }
        if slots.len() <= 1 {
            return self.run_in_slot(items, apply).await;
        }
        let groups: Vec<Vec<BatchItem>> = slots
            .values()
            .map(|group| {
                group
                    .iter()
                    .map(|&i| {
                        let mut item = items[i].clone();
                        if item.mode == Mode::Quota {
                            item.mode = Mode::Shadow;
                        }
                        item
                    })
                    .collect()
            })
            .collect();
        let phase = |apply: Apply| {
            futures::future::try_join_all(groups.iter().map(|g| self.run_in_slot(g, apply)))
        };
        let scatter = |outcomes: &[BatchOutcome]| {
            let mut verdicts = vec![Verdict::default(); items.len()];
            for (indices, outcome) in slots.values().zip(outcomes) {
                for (&i, verdict) in indices.iter().zip(&outcome.verdicts) {
                    verdicts[i] = *verdict;
                }
            }
            verdicts
        };
        let mut outcomes = phase(Apply::DryRun).await?;
        // Over every limit with its own mode: an enforced refusal in any slot refuses, and quotas count across
        // slots.
        let admitted = admits(
            items
                .iter()
                .zip(scatter(&outcomes))
                .map(|(item, v)| (item.mode, v.allowed)),
            Elsewhere::default(),
        );
        if admitted && apply == Apply::Consume {
            outcomes = phase(Apply::Consume).await?;
        } else if !admitted {
            // Refused: the slots that admitted reported their cost as consumed; nothing was.
            for (group, outcome) in groups.iter().zip(&mut outcomes) {
                if outcome.allowed {
                    for (item, verdict) in group.iter().zip(&mut outcome.verdicts) {
                        if verdict.allowed {
                            verdict.remaining = (verdict.remaining + item.cost).min(item.limit);
                        }
                    }
                }
            }
        }
        Ok(BatchOutcome {
            allowed: admitted && outcomes.iter().all(|o| o.allowed),
            verdicts: scatter(&outcomes),
        })
    }

    /// Queues a decision over keys of one slot for the coalescing task and waits for its answer.
    async fn run_in_slot(
        &self,
        items: &[BatchItem],
        apply: Apply,
    ) -> Result<BatchOutcome, StoreError> {
        let mut args = Vec::with_capacity(2 + items.len() * 5);
        args.push(Value::Integer(i64::from(apply == Apply::Consume)));
        args.push(Value::Integer(items.len() as i64));
        for item in items {
            args.push(Value::Integer(i64::from(item.algorithm.code())));
            args.push(Value::Integer(saturating_i64(item.limit)));
            args.push(Value::Integer(saturating_i64(item.window_ms)));
            args.push(Value::Integer(saturating_i64(item.cost)));
            args.push(Value::Integer(i64::from(item.mode.code())));
        }
        let keys: Vec<Key> = items.iter().map(|i| Key::from(i.key.as_str())).collect();
        // Only a cluster groups by slot; a single Redis has no slots to hash for.
        let slot = match keys.first() {
            Some(k) if self.shared.client.is_clustered() => fred::util::redis_keyslot(k.as_bytes()),
            _ => 0,
        };
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            keys,
            args,
            limits: items.len(),
            slot,
            reply,
        };
        self.queue.try_send(pending).map_err(|e| {
            StoreError::Unavailable(
                match e {
                    mpsc::error::TrySendError::Full(_) => "too many decisions waiting for Redis",
                    mpsc::error::TrySendError::Closed(_) => "store stopped",
                }
                .to_owned(),
            )
        })?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("store stopped".to_owned()))?
    }
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The coalescing task: takes every decision waiting (up to the batch bounds), sends them as one call per slot,
/// answers each, and starts over.
async fn coalesce(shared: Arc<Shared>, mut waiting: mpsc::Receiver<Pending>) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH_DECISIONS);
    while let Some(first) = waiting.recv().await {
        let mut keys = first.keys.len();
        batch.push(first);
        while batch.len() < MAX_BATCH_DECISIONS && keys < MAX_BATCH_KEYS {
            match waiting.try_recv() {
                Ok(next) => {
                    keys += next.keys.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        // A caller that gave up (its decision timed out and its failure mode answered) consumes nothing.
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        if batch.iter().all(|p| p.slot == batch[0].slot) {
            shared.call(&mut batch).await;
        } else {
            let mut by_slot: BTreeMap<u16, Vec<Pending>> = BTreeMap::new();
            for p in batch.drain(..) {
                by_slot.entry(p.slot).or_default().push(p);
            }
            futures::future::join_all(by_slot.values_mut().map(|group| shared.call(group))).await;
        }
    }
}

impl Shared {
    fn now_arg(&self) -> Value {
        match self.time_mode {
            TimeMode::Redis => Value::from(""),
            TimeMode::Client => {
                let us = match self.clock.get() {
                    Some(clock) => clock(),
                    None => redline_runtime::clock::epoch_us(),
                };
                Value::Integer(saturating_i64(us))
            }
        }
    }

    /// One script call for a batch of decisions whose keys share a slot; answers each of them and leaves
    /// `batch` empty (its allocation is reused for the next batch).
    async fn call(&self, batch: &mut Vec<Pending>) {
        let total_keys = batch.iter().map(|p| p.keys.len()).sum();
        let total_args = 2 + batch.iter().map(|p| p.args.len()).sum::<usize>();
        let mut keys: Vec<Key> = Vec::with_capacity(total_keys);
        let mut args: Vec<Value> = Vec::with_capacity(total_args);
        args.push(self.now_arg());
        args.push(Value::Integer(batch.len() as i64));
        let mut waiting = Vec::with_capacity(batch.len());
        for p in batch.drain(..) {
            keys.extend(p.keys);
            args.extend(p.args);
            waiting.push((p.limits, p.reply));
        }
        let answer = self.eval(keys, args).await;
        match answer {
            Ok(reply) => {
                let mut at = 0;
                for (limits, reply_to) in waiting {
                    let outcome = parse(&reply, &mut at, limits);
                    let _ = reply_to.send(outcome);
                }
            }
            Err(e) => {
                for (_, reply_to) in waiting {
                    let _ = reply_to.send(Err(e.clone()));
                }
            }
        }
    }

    async fn eval(&self, keys: Vec<Key>, args: Vec<Value>) -> Result<Vec<i64>, StoreError> {
        if !self.client.is_connected() {
            return Err(StoreError::Unavailable("not connected".to_owned()));
        }
        let client = self.client.with_options(&self.options);
        let sha = match self.sha.get() {
            Some(sha) => sha.clone(),
            None => self.load(&client).await?,
        };
        // Kept for the retry: the first call consumes its arguments.
        let retry = (keys.clone(), args.clone());
        let reply: Result<Vec<i64>, _> = client.evalsha(sha, keys, args).await;
        match reply {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                // First call after a Redis restart or SCRIPT FLUSH (or on a cluster node added since): load
                // and retry once. The script did not run, so no decision was applied twice.
                let sha = self.load(&client).await?;
                client.evalsha(sha, retry.0, retry.1).await
            }
            other => other,
        }
        .map_err(classify)
    }

    async fn load(
        &self,
        client: &fred::clients::WithOptions<Client>,
    ) -> Result<String, StoreError> {
        // On a cluster, every primary needs the script: a call goes to the node of its keys' slot.
        let sha: String = if self.client.is_clustered() {
            client.script_load_cluster(scripts::DECIDE).await
        } else {
            client.script_load(scripts::DECIDE).await
        }
        .map_err(classify)?;
        let _ = self.sha.set(sha.clone());
        Ok(sha)
    }
}

/// Only error replies that say the script failed or a key has the wrong type are protocol errors (a bug, or a foreign key of
/// another type under our prefix). Everything else, including replies such as `LOADING` (Redis replaying its
/// AOF after a restart), `BUSY` or `READONLY`, and every connection-level failure, means "Redis cannot decide
/// now", so the failure modes apply.
fn classify(e: fred::error::Error) -> StoreError {
    let details = e.details();
    let script_failed = details.starts_with("ERR") && details.contains("script");
    if script_failed || details.starts_with("WRONGTYPE") {
        StoreError::Protocol(e.to_string())
    } else {
        StoreError::Unavailable(e.to_string())
    }
}

/// Reads one decision's answer (`allowed`, then four integers per limit) from `reply` at `*at`.
fn parse(reply: &[i64], at: &mut usize, limits: usize) -> Result<BatchOutcome, StoreError> {
    let start = *at;
    let end = start + 1 + 4 * limits;
    *at = end;
    let Some(answer) = reply.get(start..end) else {
        return Err(StoreError::Protocol(format!(
            "expected {end} integers, got {}",
            reply.len()
        )));
    };
    if answer[0] == -1 {
        return Err(StoreError::Protocol(
            "a counter key holds a value of another type".to_owned(),
        ));
    }
    let non_negative =
        |v: i64| u64::try_from(v).map_err(|_| StoreError::Protocol(format!("negative value {v}")));
    let mut verdicts = Vec::with_capacity(limits);
    for chunk in answer[1..].chunks_exact(4) {
        verdicts.push(Verdict {
            allowed: chunk[0] == 1,
            remaining: non_negative(chunk[1])?,
            reset_after_ms: non_negative(chunk[2])?,
            retry_after_ms: non_negative(chunk[3])?,
        });
    }
    Ok(BatchOutcome {
        allowed: answer[0] == 1,
        verdicts,
    })
}

impl Store for RedisStore {
    fn decide<'a>(
        &'a self,
        items: &'a [BatchItem],
        apply: Apply,
    ) -> BoxFuture<'a, Result<BatchOutcome, StoreError>> {
        self.run(items, apply).boxed()
    }

    fn remove<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<u64, StoreError>> {
        async move {
            if keys.is_empty() {
                return Ok(0);
            }
            let shared = &self.shared;
            if !shared.client.is_connected() {
                return Err(StoreError::Unavailable("not connected".to_owned()));
            }
            // DEL of several keys must stay within one slot on a cluster: one call per slot.
            let groups = fred::util::group_by_hash_slot(keys.iter().map(String::as_str))
                .map_err(|e| StoreError::Protocol(e.to_string()))?;
            let client = shared.client.with_options(&shared.options);
            let removed = futures::future::try_join_all(
                groups
                    .into_values()
                    .map(|keys| client.del::<i64, _>(Vec::from(keys))),
            )
            .await
            .map_err(classify)?;
            Ok(removed
                .into_iter()
                .map(|n| u64::try_from(n).unwrap_or(0))
                .sum())
        }
        .boxed()
    }
}
