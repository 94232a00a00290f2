//! The shared store: one `EVALSHA` of [`scripts::DECIDE`] per decision (per slot on Redis Cluster).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fred::prelude::*;
use fred::types::config::{ConnectionConfig, PerformanceConfig, ReconnectPolicy};
use futures::FutureExt;
use futures::future::BoxFuture;

use super::{Apply, BatchItem, BatchOutcome, Store, StoreError, Verdict, scripts};

/// Where the scripts take the current time from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TimeMode {
    /// Redis `TIME` inside the script: one clock for every instance (default).
    Redis,
    /// This process's clock, passed as an argument, for managed Redis that rejects `TIME` in scripts.
    /// Instances must then be kept in sync (NTP); skew shifts windows by the skew.
    Client,
}

/// Counters in Redis.
#[derive(Clone)]
pub struct RedisStore {
    client: Client,
    // SHA1 of the script as Redis reports it on first load (SHA1 is deterministic, so it never changes).
    sha: std::sync::Arc<std::sync::OnceLock<String>>,
    time_mode: TimeMode,
    options: Options,
    clock: Option<std::sync::Arc<dyn Fn() -> u64 + Send + Sync>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("time_mode", &self.time_mode)
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
    /// A store over a connected (or connecting) client.
    pub fn new(client: Client, time_mode: TimeMode, timeout: Duration) -> Self {
        Self {
            client,
            sha: std::sync::Arc::default(),
            time_mode,
            options: Options {
                timeout: Some(timeout),
                fail_fast: true,
                max_attempts: Some(1),
                ..Options::default()
            },
            clock: None,
        }
    }

    /// Replaces the process clock used in [`TimeMode::Client`] (tests drive time explicitly). Returns µs.
    pub fn with_clock(mut self, clock: std::sync::Arc<dyn Fn() -> u64 + Send + Sync>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The client, for health probes.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Waits (at most `within`) until the client is connected and the decision script is loaded, so the first
    /// decisions after start-up come from Redis instead of spending their budget on the connection. False
    /// when Redis did not answer in time; the service then starts anyway and the failure modes apply.
    pub async fn warm_up(&self, within: Duration) -> bool {
        let ready = async {
            self.client.wait_for_connect().await.ok()?;
            let client = self.client.with_options(&Options {
                timeout: Some(within),
                ..Options::default()
            });
            self.load(&client).await.ok()
        };
        matches!(tokio::time::timeout(within, ready).await, Ok(Some(_)))
    }

    /// Whether Redis answers `PING` within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> bool {
        if !self.client.is_connected() {
            return false;
        }
        let ping = self.client.ping::<String>(None);
        matches!(tokio::time::timeout(timeout, ping).await, Ok(Ok(_)))
    }

    fn now_arg(&self) -> String {
        match self.time_mode {
            TimeMode::Redis => String::new(),
            TimeMode::Client => {
                let us = match &self.clock {
                    Some(clock) => clock(),
                    None => SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
                };
                us.to_string()
            }
        }
    }

    /// Decides a batch: one script call on a single Redis, or on a cluster when the batch's keys share a slot
    /// (always, for the limits of one client: see [`super::keys`]); else one call per slot in two phases.
    ///
    /// Across slots no single script sees every counter, so the batch is first run as a dry run in each slot;
    /// only when every slot admits it is it run for real. A refusal in the dry run consumes nothing anywhere,
    /// as in one slot. The bound this leaves: a concurrent request may take the last units of one slot
    /// between the two phases; the second phase then refuses in that slot after the other slots consumed.
    async fn run(&self, items: &[BatchItem], apply: Apply) -> Result<BatchOutcome, StoreError> {
        if !self.client.is_connected() {
            return Err(StoreError::Unavailable("not connected".to_owned()));
        }
        if !self.client.is_clustered() {
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
            .map(|group| group.iter().map(|&i| items[i].clone()).collect())
            .collect();
        let phase = |apply: Apply| {
            futures::future::try_join_all(groups.iter().map(|g| self.run_in_slot(g, apply)))
        };
        let mut outcomes = phase(Apply::DryRun).await?;
        let admitted = outcomes.iter().all(|o| o.allowed);
        if admitted && apply == Apply::Consume {
            outcomes = phase(Apply::Consume).await?;
        } else if !admitted {
            // Refused: the slots that admitted reported their cost as consumed; nothing was.
            for (group, outcome) in groups.iter().zip(&mut outcomes) {
                if outcome.allowed {
                    for (item, verdict) in group.iter().zip(&mut outcome.verdicts) {
                        verdict.remaining = (verdict.remaining + item.cost).min(item.limit);
                    }
                }
            }
        }
        let mut verdicts = vec![Verdict::default(); items.len()];
        for (indices, outcome) in slots.values().zip(&outcomes) {
            for (&i, verdict) in indices.iter().zip(&outcome.verdicts) {
                verdicts[i] = *verdict;
            }
        }
        Ok(BatchOutcome {
            allowed: outcomes.iter().all(|o| o.allowed),
            verdicts,
        })
    }

    /// One script call over keys of one slot.
    async fn run_in_slot(
        &self,
        items: &[BatchItem],
        apply: Apply,
    ) -> Result<BatchOutcome, StoreError> {
        let keys: Vec<String> = items.iter().map(|i| i.key.clone()).collect();
        let mut args = Vec::with_capacity(2 + items.len() * 5);
        args.push(self.now_arg());
        args.push(if apply == Apply::Consume { "1" } else { "0" }.to_owned());
        for item in items {
            args.push(item.algorithm.code().to_string());
            args.push(item.limit.to_string());
            args.push(item.window_ms.to_string());
            args.push(item.cost.to_string());
            args.push(if item.shadow { "1" } else { "0" }.to_owned());
        }
        let client = self.client.with_options(&self.options);
        let sha = match self.sha.get() {
            Some(sha) => sha.clone(),
            None => self.load(&client).await?,
        };
        let reply: Result<Vec<i64>, _> = client.evalsha(sha, keys.clone(), args.clone()).await;
        let reply = match reply {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                // First call after a Redis restart or SCRIPT FLUSH (or on a cluster node added since): load
                // and retry once.
                let sha = self.load(&client).await?;
                client.evalsha(sha, keys, args).await
            }
            other => other,
        }
        .map_err(classify)?;
        parse(&reply, items.len())
    }
}

impl RedisStore {
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

fn parse(reply: &[i64], n: usize) -> Result<BatchOutcome, StoreError> {
    if reply.len() != 2 + 4 * n {
        return Err(StoreError::Protocol(format!(
            "expected {} integers, got {}",
            2 + 4 * n,
            reply.len()
        )));
    }
    let non_negative =
        |v: i64| u64::try_from(v).map_err(|_| StoreError::Protocol(format!("negative value {v}")));
    let mut verdicts = Vec::with_capacity(n);
    for chunk in reply[2..].chunks_exact(4) {
        verdicts.push(Verdict {
            allowed: chunk[0] == 1,
            remaining: non_negative(chunk[1])?,
            reset_after_ms: non_negative(chunk[2])?,
            retry_after_ms: non_negative(chunk[3])?,
        });
    }
    Ok(BatchOutcome {
        allowed: reply[0] == 1,
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
            if !self.client.is_connected() {
                return Err(StoreError::Unavailable("not connected".to_owned()));
            }
            // DEL of several keys must stay within one slot on a cluster: one call per slot.
            let groups = fred::util::group_by_hash_slot(keys.iter().map(String::as_str))
                .map_err(|e| StoreError::Protocol(e.to_string()))?;
            let client = self.client.with_options(&self.options);
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
