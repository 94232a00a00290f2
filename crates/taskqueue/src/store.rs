//! [`TaskStore`]: typed operations over the key layout (`keys.rs`) and the scripts (`scripts.rs`).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use fred::clients::WithOptions;
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand};
use serde_json::Value as Json;

use crate::StoreError;
use crate::connect::command_options;
use crate::keys::{Keys, PRIORITIES};
use crate::model::*;
use crate::scripts::Scripts;
use redline_catalog::{DEFAULT_MAX_RETRIES, DEFAULT_TIME_LIMIT};

/// Settings of the queue that every process sharing a namespace must agree on.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Key namespace (a hash tag is added when missing).
    pub namespace: String,
    /// How long succeeded and cancelled records are kept (Celery's `result_expires`, 1 day).
    pub result_ttl: Duration,
    /// How long failed records stay in the dead-letter index.
    pub dead_letter_ttl: Duration,
    /// At most this many tasks in the dead-letter index.
    pub dead_letter_cap: u64,
    /// Lifetime of an idempotency key.
    pub idempotency_ttl: Duration,
    /// A worker that has not renewed its lease for this long is presumed dead and its tasks are recovered.
    pub lease: Duration,
    /// A task recovered more often than this is quarantined as failed (a poison pill).
    pub max_recoveries: u32,
    /// At most this many finished records are kept (the oldest go first), and the listing index holds at
    /// most this many submit calls: what bounds Redis memory for finished work, whatever the TTLs.
    pub max_finished: u64,
    /// At most this many queues per namespace (queues are created by use).
    pub max_queues: u64,
}

/// [`QueueConfig::max_finished`] by default: about 30 MB of finished no-op records.
pub const DEFAULT_MAX_FINISHED: u64 = 100_000;
/// Most task ids in one entry of the listing index, so that the oldest entries it drops to stay within
/// 2 × `max_finished` ids are small to read, and a listing page does not fetch a whole batch for one task.
pub const INDEX_IDS_PER_ENTRY: u64 = 16;
/// [`QueueConfig::max_queues`] by default.
pub const DEFAULT_MAX_QUEUES: u64 = 1_000;

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            namespace: "redline".to_owned(),
            result_ttl: Duration::from_secs(86_400),
            dead_letter_ttl: Duration::from_secs(7 * 86_400),
            dead_letter_cap: 10_000,
            idempotency_ttl: Duration::from_secs(86_400),
            lease: Duration::from_secs(14),
            max_recoveries: 10,
            max_finished: DEFAULT_MAX_FINISHED,
            max_queues: DEFAULT_MAX_QUEUES,
        }
    }
}

/// The task queue in Redis. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct TaskStore {
    client: Client,
    cmd: WithOptions<Client>,
    keys: Keys,
    scripts: Scripts,
    config: QueueConfig,
}

impl std::fmt::Debug for TaskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskStore")
            .field("namespace", &self.keys.namespace())
            .finish_non_exhaustive()
    }
}

fn ms(d: Duration) -> String {
    d.as_millis().to_string()
}

fn protocol(what: &str) -> StoreError {
    StoreError::Protocol(what.to_owned())
}

fn text(v: &Value) -> String {
    v.as_string().unwrap_or_default()
}

fn int(v: &Value) -> u64 {
    match v {
        Value::Integer(i) => (*i).max(0) as u64,
        other => other.as_u64().unwrap_or(0),
    }
}

fn json_or_empty(s: String, empty: Json) -> Json {
    if s.is_empty() {
        empty
    } else {
        serde_json::from_str(&s).unwrap_or(empty)
    }
}

fn compact_json(v: &Json, empty_is: fn(&Json) -> bool) -> String {
    if empty_is(v) {
        String::new()
    } else {
        v.to_string()
    }
}

impl TaskStore {
    /// A store over an existing client.
    pub fn new(client: Client, config: QueueConfig) -> Self {
        let cmd = client.with_options(&command_options());
        Self {
            keys: Keys::new(&config.namespace),
            client,
            cmd,
            scripts: Scripts::new(),
            config,
        }
    }

    /// The key layout.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The queue settings.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// The underlying client (for health checks).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Round trip to Redis.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self.cmd.ping(None).await?;
        Ok(())
    }

    async fn eval(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, StoreError> {
        match self
            .cmd
            .evalsha(script.sha1().clone(), keys.clone(), args.clone())
            .await
        {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                // Redis restarted or flushed its script cache: load once and run again. EVALSHA that
                // answered NOSCRIPT did not run, so this cannot apply a transition twice.
                let lua = script.lua().cloned().unwrap_or_default();
                let _: String = self.cmd.script_load(lua).await?;
                Ok(self.cmd.evalsha(script.sha1().clone(), keys, args).await?)
            }
            other => Ok(other?),
        }
    }

    // === Submitting ===

    /// Enqueues tasks atomically per call. Tasks with a matching idempotency key return the earlier task.
    pub async fn submit(&self, tasks: &[NewTask]) -> Result<Vec<Submitted>, StoreError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = Vec::with_capacity(3 + tasks.len() * 13);
        args.push(self.keys.namespace().to_owned());
        args.push(tasks.len().to_string());
        args.push(self.config.result_ttl.as_secs().max(1).to_string());
        for t in tasks {
            args.push(t.id.clone());
            args.push(t.name.clone());
            args.push(compact_json(&t.args, |v| {
                v.as_array().is_some_and(Vec::is_empty)
            }));
            args.push(compact_json(&t.kwargs, |v| {
                v.as_object().is_some_and(|m| m.is_empty())
            }));
            args.push(t.queue.clone());
            args.push(t.priority.min(PRIORITIES - 1).to_string());
            // Defaults travel as "" and are not stored (see DEFAULT_MAX_RETRIES).
            args.push(if t.max_retries == DEFAULT_MAX_RETRIES {
                String::new()
            } else {
                t.max_retries.to_string()
            });
            args.push(if t.time_limit == DEFAULT_TIME_LIMIT {
                String::new()
            } else {
                ms(t.time_limit)
            });
            args.push(t.countdown.map(ms).unwrap_or_else(|| "0".to_owned()));
            args.push(t.eta_ms.unwrap_or(0).to_string());
            args.push(t.idempotency_key.clone().unwrap_or_default());
            args.push(self.config.idempotency_ttl.as_secs().max(1).to_string());
            args.push(t.traceparent.clone().unwrap_or_default());
        }
        let keys = vec![self.keys.queues(), self.keys.all(), self.keys.all_count()];
        let reply = self.eval(&self.scripts.submit, keys, args).await?;
        let flat = reply.into_array();
        if flat.len() != tasks.len() * 3 {
            return Err(protocol("submit reply"));
        }
        flat.chunks_exact(3)
            .map(|f| {
                let state =
                    TaskState::parse(&text(&f[1])).ok_or_else(|| protocol("submit reply"))?;
                Ok(Submitted {
                    id: text(&f[0]),
                    state,
                    duplicate: int(&f[2]) == 1,
                })
            })
            .collect()
    }

    // === Reading ===

    /// A task's record, or `None` if it does not exist (never submitted, cleaned up or expired).
    pub async fn get(&self, id: &str) -> Result<Option<TaskRecord>, StoreError> {
        let fields: HashMap<String, String> = self.cmd.hgetall(self.keys.task(id)).await?;
        Ok(TaskRecord::from_fields(id, &fields))
    }

    /// The records of `ids`, in order, read in one pipeline.
    pub async fn get_many(&self, ids: &[String]) -> Result<Vec<Option<TaskRecord>>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let pipe = self.cmd.pipeline();
        for id in ids {
            let _: () = pipe.hgetall(self.keys.task(id)).await?;
        }
        let all: Vec<HashMap<String, String>> = pipe.all().await?;
        Ok(ids
            .iter()
            .zip(all.iter())
            .map(|(id, f)| TaskRecord::from_fields(id, f))
            .collect())
    }

    /// Lists tasks newest first, from the listing index or the dead-letter index; `cursor` (from a previous
    /// page) continues where that page ended.
    pub async fn list(
        &self,
        filter: &ListFilter,
        limit: usize,
        cursor: Option<Cursor>,
    ) -> Result<ListPage, StoreError> {
        let limit = limit.clamp(1, 1000);
        let cursor = match cursor {
            None => None,
            Some(c) => Some(
                c.position(filter.dead_letter)
                    .ok_or(StoreError::BadCursor)?,
            ),
        };
        match cursor {
            None if filter.dead_letter => self.list_dead(filter, limit, None).await,
            None => self.list_all(filter, limit, None).await,
            Some(Position::Dead(score, id)) => {
                self.list_dead(filter, limit, Some((score, id))).await
            }
            Some(Position::All(entry, skip)) => {
                self.list_all(filter, limit, Some((entry, skip))).await
            }
        }
    }

    /// The listing stream, newest first. Each entry is one submit call; its fields are task ids in
    /// submission order. The cursor is the entry id and how many of its ids (newest first) were consumed.
    async fn list_all(
        &self,
        filter: &ListFilter,
        limit: usize,
        cursor: Option<(String, usize)>,
    ) -> Result<ListPage, StoreError> {
        const ENTRIES: usize = 32;
        let chunk = (limit * 2).max(100);
        let index = self.keys.all();
        let (mut end, mut resume) = match cursor {
            Some((entry, skip)) => (entry.clone(), Some((entry, skip))),
            None => ("+".to_owned(), None),
        };
        let mut out = Vec::new();
        // Bounded, so a very selective filter over a long history can't run forever.
        let mut scanned = 0usize;
        while scanned < 20_000 {
            let reply: Value = self
                .cmd
                .custom(
                    CustomCommand::new_static("XREVRANGE", ClusterHash::FirstKey, false),
                    vec![
                        index.clone(),
                        end.clone(),
                        "-".to_owned(),
                        "COUNT".to_owned(),
                        ENTRIES.to_string(),
                    ],
                )
                .await?;
            let entries = stream_entries(reply)?;
            let full = entries.len() == ENTRIES;
            let Some(oldest) = entries.last().map(|(id, _)| id.clone()) else {
                break;
            };
            // Newest first, with each id's entry and position in it (for the cursor); records are then read in
            // pipelines of `chunk` ids, not one round trip per entry (most entries hold a single id).
            let mut page = Vec::new();
            for (entry, mut ids) in entries {
                ids.reverse();
                let skip = match &resume {
                    Some((e, skip)) if *e == entry => (*skip).min(ids.len()),
                    _ => 0,
                };
                page.extend(
                    ids.into_iter()
                        .enumerate()
                        .skip(skip)
                        .map(|(k, id)| (id, entry.clone(), k + 1)),
                );
            }
            for part in page.chunks(chunk) {
                let ids: Vec<String> = part.iter().map(|(id, _, _)| id.clone()).collect();
                let records = self.get_many(&ids).await?;
                for ((_, entry, consumed), rec) in part.iter().zip(records) {
                    scanned += 1;
                    // Ids whose record expired or was cleaned up are skipped; the entry ages out.
                    if let Some(rec) = rec
                        && filter.matches(&rec)
                    {
                        out.push(rec);
                        if out.len() == limit {
                            let next = Some(Cursor(format!("{entry}/{consumed}")));
                            return Ok(ListPage { tasks: out, next });
                        }
                    }
                }
            }
            if !full {
                break;
            }
            // Older than the last entry read (an exclusive bound).
            end = format!("({oldest}");
            resume = None;
        }
        Ok(ListPage {
            tasks: out,
            next: None,
        })
    }

    /// The dead-letter index (a sorted set by failure time), newest first; the cursor is `score:id`.
    ///
    /// Pages walk the set by rank, not by score: one batch of completions gives many tasks the same score,
    /// and a walk by score would re-read that whole run for every page (or forever, past the length of a
    /// read). A page starts right after its cursor's member when that is still in the set (ZREVRANK), else
    /// after every member that sorts before the cursor's position (higher score, or the same score and a
    /// greater id: Redis orders equal scores by member), so a trimmed cursor neither repeats nor skips.
    async fn list_dead(
        &self,
        filter: &ListFilter,
        limit: usize,
        cursor: Option<(u64, String)>,
    ) -> Result<ListPage, StoreError> {
        let index = self.keys.dead();
        let mut out = Vec::new();
        let mut missing = Vec::new();
        // Where to start reading, and (for a cursor whose member is gone) what to skip at the start.
        let (mut rank, mut skip_before) = match &cursor {
            None => (0u64, None),
            Some((score, id)) => {
                let rank: Option<u64> = self.cmd.zrevrank(&index, id, false).await?;
                match rank {
                    Some(r) => (r + 1, None),
                    None => {
                        // Scores are whole milliseconds: "above score" starts at score + 1.
                        let higher: u64 = self
                            .cmd
                            .zcount(&index, (*score + 1) as f64, f64::INFINITY)
                            .await?;
                        (higher, Some((*score, id.clone())))
                    }
                }
            }
        };
        // Ids already returned by this call: a failure added while it reads shifts ranks down by one.
        let mut seen = HashSet::new();
        let chunk = (limit * 2).max(100) as u64;
        // Bounded, so a very selective filter over a long history can't run forever.
        let mut scanned = 0usize;
        let mut next = None;
        'scan: while scanned < 20_000 {
            let page: Vec<(String, f64)> = self
                .cmd
                .zrevrange(&index, rank as i64, (rank + chunk - 1) as i64, true)
                .await?;
            if page.is_empty() {
                break;
            }
            rank += page.len() as u64;
            let ids: Vec<String> = page.iter().map(|(id, _)| id.clone()).collect();
            let records = self.get_many(&ids).await?;
            for ((id, score), rec) in page.iter().zip(records) {
                scanned += 1;
                let score = *score as u64;
                if let Some((s, cursor_id)) = &skip_before {
                    if score == *s && id.as_bytes() >= cursor_id.as_bytes() {
                        continue;
                    }
                    skip_before = None;
                }
                if !seen.insert(id.clone()) {
                    continue;
                }
                let Some(rec) = rec else {
                    missing.push(id.clone());
                    continue;
                };
                if filter.matches(&rec) {
                    out.push(rec);
                    if out.len() == limit {
                        next = Some(Cursor(format!("{score}:{id}")));
                        break 'scan;
                    }
                }
            }
            if (page.len() as u64) < chunk {
                break;
            }
        }
        if !missing.is_empty() {
            // Index entries whose record expired: drop them so later listings skip the lookup.
            let _: u64 = self.cmd.zrem(&index, missing).await?;
        }
        Ok(ListPage { tasks: out, next })
    }

    /// Counts per queue and totals.
    pub async fn stats(&self) -> Result<QueueStats, StoreError> {
        let mut queues: Vec<String> = self.cmd.smembers(self.keys.queues()).await?;
        queues.sort();
        // Ages and leases are on Redis's clock, as every stored time is.
        let now_us = self.redis_now_us().await?;
        let pipe = self.cmd.pipeline();
        for q in &queues {
            for p in 0..PRIORITIES {
                let _: () = pipe.llen(self.keys.queue(q, p)).await?;
            }
            let _: () = pipe.zcard(self.keys.scheduled(q)).await?;
            let _: () = pipe.hgetall(self.keys.queue_stats(q)).await?;
            for p in 0..PRIORITIES {
                let _: () = pipe.lindex(self.keys.queue(q, p), -1).await?;
            }
        }
        // Live means a lease that has not run out: a SIGKILLed worker stays registered until a peer
        // recovers its tasks, and must not count.
        let _: () = pipe
            .zcount(self.keys.workers(), (now_us / 1000) as f64, f64::INFINITY)
            .await?;
        let _: () = pipe.zcard(self.keys.dead()).await?;
        let _: () = pipe.hgetall(self.keys.stats()).await?;
        let replies: Vec<Value> = pipe.all().await?;
        let mut it = replies.into_iter();
        let mut next = || it.next().ok_or_else(|| protocol("stats reply"));
        let mut stats = QueueStats::default();
        let mut oldest_ids = Vec::new();
        for q in &queues {
            let mut c = QueueCounts {
                queue: q.clone(),
                ..Default::default()
            };
            for _ in 0..PRIORITIES {
                c.queued += int(&next()?);
            }
            c.scheduled = int(&next()?);
            let counters: HashMap<String, i64> = next()?.convert().unwrap_or_default();
            let get = |k: &str| counters.get(k).copied().unwrap_or(0).max(0) as u64;
            c.running = get("running");
            c.succeeded = get("succeeded");
            c.failed = get("failed");
            c.cancelled = get("cancelled");
            c.retried = get("retried");
            c.recovered = get("recovered");
            let heads: Vec<String> = (0..PRIORITIES)
                .filter_map(|_| next().ok().and_then(|v| v.as_string()))
                .collect();
            oldest_ids.push(heads);
            stats.queues.push(c);
        }
        stats.workers = int(&next()?);
        stats.dead_letter = int(&next()?);
        let global: HashMap<String, i64> = next()?.convert().unwrap_or_default();
        stats.stale_completions =
            global.get("stale_completions").copied().unwrap_or(0).max(0) as u64;
        stats.lease_expiries = global.get("lease_expiries").copied().unwrap_or(0).max(0) as u64;

        // The oldest queued task of a queue is the tail of one of its priority lists.
        for (c, heads) in stats.queues.iter_mut().zip(oldest_ids) {
            if heads.is_empty() {
                continue;
            }
            let pipe = self.cmd.pipeline();
            for id in &heads {
                let _: () = pipe.hget(self.keys.task(id), "submitted").await?;
            }
            let times: Vec<Option<u64>> = pipe.all().await?;
            c.oldest_queued_age = times
                .into_iter()
                .flatten()
                .min()
                .map(|t| Duration::from_micros(now_us.saturating_sub(t)));
        }
        Ok(stats)
    }

    /// Live workers, with the tasks each holds.
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>, StoreError> {
        // Only workers whose lease runs: a SIGKILLed worker stays in the set until a peer recovers its tasks.
        let now_ms = self.redis_now_us().await? / 1000;
        let ids: Vec<String> = self
            .cmd
            .zrangebyscore(
                self.keys.workers(),
                now_ms as f64,
                f64::INFINITY,
                false,
                None,
            )
            .await?;
        // One pipeline for every worker's info and held tasks, not two round trips per worker.
        let pipe = self.cmd.pipeline();
        for id in &ids {
            let _: () = pipe.hgetall(self.keys.worker(id)).await?;
            let _: () = pipe.smembers(self.keys.worker_active(id)).await?;
        }
        let replies: Vec<Value> = if ids.is_empty() {
            Vec::new()
        } else {
            pipe.all().await?
        };
        let mut replies = replies.into_iter();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let f: HashMap<String, String> = replies
                .next()
                .and_then(|v| v.convert().ok())
                .unwrap_or_default();
            let mut active: Vec<String> = replies
                .next()
                .and_then(|v| v.convert().ok())
                .unwrap_or_default();
            active.sort();
            let num = |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            out.push(WorkerInfo {
                hostname: f.get("hostname").cloned().unwrap_or_default(),
                queues: f
                    .get("queues")
                    .map(|q| {
                        q.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
                concurrency: num("concurrency") as u32,
                active,
                started_ms: num("started"),
                last_heartbeat_ms: num("last_heartbeat"),
                processed: num("processed"),
                failed: num("failed"),
                pid: num("pid") as u32,
                version: f.get("version").cloned().unwrap_or_default(),
                id,
            });
        }
        Ok(out)
    }

    /// Writes this process's retention settings and caps for every script to apply (TaskService calls it at start and
    /// every few seconds, so a Redis that lost them gets them back).
    pub async fn publish_settings(&self) -> Result<(), StoreError> {
        let _: () = self
            .cmd
            .hset(
                self.keys.settings(),
                [
                    ("result_ttl", self.config.result_ttl.as_secs().max(1)),
                    (
                        "dead_letter_ttl",
                        self.config.dead_letter_ttl.as_secs().max(1),
                    ),
                    ("max_finished", self.config.max_finished.max(1)),
                    ("max_queues", self.config.max_queues.max(1)),
                ],
            )
            .await?;
        Ok(())
    }

    /// Task type schemas published by workers (name → JSON).
    pub async fn published_task_types(&self) -> Result<HashMap<String, String>, StoreError> {
        Ok(self.cmd.hgetall(self.keys.task_types()).await?)
    }

    /// Publishes task type schemas (name → JSON).
    pub async fn publish_task_types(&self, types: Vec<(String, String)>) -> Result<(), StoreError> {
        if types.is_empty() {
            return Ok(());
        }
        let _: () = self.cmd.hset(self.keys.task_types(), types).await?;
        Ok(())
    }

    // === Control ===

    /// Cancels a task.
    pub async fn cancel(&self, id: &str) -> Result<CancelOutcome, StoreError> {
        let reply = self
            .eval(
                &self.scripts.cancel,
                vec![self.keys.task(id), self.keys.done()],
                vec![
                    self.keys.namespace().to_owned(),
                    id.to_owned(),
                    self.config.result_ttl.as_secs().max(1).to_string(),
                    self.config.dead_letter_ttl.as_secs().max(1).to_string(),
                ],
            )
            .await?;
        let f = reply.into_array();
        let what = f.first().map(text).unwrap_or_default();
        let state = f.get(1).map(text).and_then(|s| TaskState::parse(&s));
        Ok(match (what.as_str(), state) {
            ("cancelled", _) => CancelOutcome::Cancelled,
            ("requested", _) => CancelOutcome::Requested,
            ("terminal", Some(s)) => CancelOutcome::AlreadyEnded(s),
            ("missing", _) => CancelOutcome::NotFound,
            _ => return Err(protocol("cancel reply")),
        })
    }

    /// Requeues a failed or cancelled task with a fresh retry budget.
    pub async fn retry(&self, id: &str) -> Result<RetryOutcome, StoreError> {
        let reply = self
            .eval(
                &self.scripts.retry,
                vec![self.keys.task(id), self.keys.dead(), self.keys.done()],
                vec![self.keys.namespace().to_owned(), id.to_owned()],
            )
            .await?;
        let f = reply.into_array();
        let what = f.first().map(text).unwrap_or_default();
        let state = f.get(1).map(text).and_then(|s| TaskState::parse(&s));
        Ok(match (what.as_str(), state) {
            ("queued", _) => RetryOutcome::Requeued,
            ("invalid", Some(s)) => RetryOutcome::NotRetryable(s),
            ("missing", _) => RetryOutcome::NotFound,
            _ => return Err(protocol("retry reply")),
        })
    }

    /// Deletes finished tasks that ended more than `older_than` ago (on Redis's clock). Returns how many were
    /// deleted.
    pub async fn cleanup(&self, older_than: Duration) -> Result<u64, StoreError> {
        const BATCH: u64 = 500;
        let mut total = 0;
        loop {
            let reply = self
                .eval(
                    &self.scripts.cleanup,
                    vec![self.keys.done(), self.keys.dead()],
                    vec![
                        self.keys.namespace().to_owned(),
                        ms(older_than),
                        BATCH.to_string(),
                    ],
                )
                .await?;
            let n = int(&reply);
            total += n;
            if n < BATCH {
                return Ok(total);
            }
        }
    }

    // === Workers ===

    /// Registers a worker, renews its lease or removes it, reconciling what Redis has under the worker with
    /// `held` (the tasks it runs or has outcomes on the way for, with their fences): whatever Redis has that
    /// the worker does not hold goes back to its queue.
    pub async fn heartbeat(
        &self,
        worker_id: &str,
        mode: HeartbeatMode,
        held: &[(String, u64)],
        info: &[(&str, String)],
    ) -> Result<Heartbeat, StoreError> {
        let mut args = Vec::with_capacity(6 + held.len() * 2 + info.len() * 2);
        args.extend([
            self.keys.namespace().to_owned(),
            worker_id.to_owned(),
            mode.as_str().to_owned(),
            ms(self.config.lease),
            // Info outlives the lease a little so ListWorkers can show a worker until it is reaped.
            (self.config.lease.as_secs() * 3 + 5).to_string(),
            held.len().to_string(),
        ]);
        for (id, fence) in held {
            args.push(id.clone());
            args.push(fence.to_string());
        }
        for (k, v) in info {
            args.push((*k).to_owned());
            args.push(v.clone());
        }
        let keys = vec![
            self.keys.workers(),
            self.keys.worker(worker_id),
            self.keys.worker_active(worker_id),
        ];
        let reply = self
            .eval(&self.scripts.heartbeat, keys, args)
            .await?
            .into_array();
        let ids = |v: Option<&Value>| -> Vec<String> {
            v.map(|v| v.clone().into_array().iter().map(text).collect())
                .unwrap_or_default()
        };
        Ok(Heartbeat {
            alive: reply.first().map(int) == Some(1),
            stop: ids(reply.get(1)),
            cancel: ids(reply.get(2)),
            given_back: reply.get(3).map(int).unwrap_or(0),
        })
    }

    /// How many workers hold a lease that has not expired (a SIGKILLed worker stays registered until its
    /// lease runs out and a peer recovers its tasks; it is not alive).
    pub async fn live_workers(&self) -> Result<u64, StoreError> {
        let now_ms = self.redis_now_us().await? / 1000;
        let n: u64 = self
            .cmd
            .zcount(self.keys.workers(), now_ms as f64, f64::INFINITY)
            .await?;
        Ok(n)
    }

    /// Redis's clock (TIME), in microseconds since the epoch: the clock every stored time is on.
    async fn redis_now_us(&self) -> Result<u64, StoreError> {
        let reply: Value = self
            .cmd
            .custom(
                CustomCommand::new_static("TIME", ClusterHash::Random, false),
                Vec::<String>::new(),
            )
            .await?;
        match reply.into_array().as_slice() {
            [secs, micros] => Ok(text(secs).parse::<u64>().unwrap_or(0) * 1_000_000
                + text(micros).parse::<u64>().unwrap_or(0)),
            _ => Err(protocol("TIME reply")),
        }
    }

    /// Takes up to `max` tasks from `queues` for `worker_id`.
    pub async fn claim(
        &self,
        worker_id: &str,
        queues: &[String],
        max: usize,
    ) -> Result<Claim, StoreError> {
        let mut args = vec![
            self.keys.namespace().to_owned(),
            worker_id.to_owned(),
            max.to_string(),
            ms(self.config.lease),
            self.config.max_recoveries.to_string(),
            self.config.result_ttl.as_secs().max(1).to_string(),
            self.config.dead_letter_ttl.as_secs().max(1).to_string(),
        ];
        args.extend(queues.iter().cloned());
        let keys = vec![
            self.keys.workers(),
            self.keys.worker_active(worker_id),
            self.keys.stats(),
        ];
        let reply = self
            .eval(&self.scripts.claim, keys, args)
            .await?
            .into_array();
        let status = reply.first().map(|v| match v {
            Value::Integer(i) => *i,
            other => other.as_i64().unwrap_or(0),
        });
        if status == Some(-1) {
            return Ok(Claim::LeaseLost);
        }
        let next_wake = match reply.get(1) {
            Some(Value::Integer(d)) if *d >= 0 => Some(Duration::from_millis(*d as u64)),
            _ => None,
        };
        let n = reply.get(2).map(int).unwrap_or(0) as usize;
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let b = 3 + i * 12;
            let f = reply
                .get(b..b + 12)
                .ok_or_else(|| protocol("claim reply"))?;
            tasks.push(ClaimedTask {
                id: text(&f[0]),
                fence: int(&f[1]),
                name: text(&f[2]),
                args: json_or_empty(text(&f[3]), Json::Array(Vec::new())),
                kwargs: json_or_empty(text(&f[4]), Json::Object(serde_json::Map::new())),
                attempt: int(&f[5]) as u32,
                retries: text(&f[6]).parse().unwrap_or(0),
                max_retries: text(&f[7]).parse().unwrap_or(DEFAULT_MAX_RETRIES),
                time_limit: text(&f[8])
                    .parse()
                    .map_or(DEFAULT_TIME_LIMIT, Duration::from_millis),
                traceparent: Some(text(&f[9])).filter(|s| !s.is_empty()),
                queue: text(&f[10]),
                submitted_us: text(&f[11]).parse().unwrap_or(0),
            });
        }
        Ok(Claim::Tasks { tasks, next_wake })
    }

    /// Records attempt outcomes for `worker_id`, fenced. Returns one result per completion, in order.
    pub async fn complete(
        &self,
        worker_id: &str,
        completions: &[Completion],
    ) -> Result<Vec<Completed>, StoreError> {
        if completions.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = vec![
            self.keys.namespace().to_owned(),
            worker_id.to_owned(),
            self.config.result_ttl.as_secs().max(1).to_string(),
            self.config.dead_letter_ttl.as_secs().max(1).to_string(),
            self.config.dead_letter_cap.to_string(),
            completions.len().to_string(),
        ];
        for c in completions {
            args.push(c.id.clone());
            args.push(c.fence.to_string());
            let (kind, payload, delay) = match &c.outcome {
                Outcome::Succeeded(v) => ("ok", v.to_string(), Duration::ZERO),
                Outcome::Retry { error, delay } => ("retry", error.clone(), *delay),
                Outcome::Failed(e) => ("fail", e.clone(), Duration::ZERO),
                Outcome::Cancelled(e) => ("cancelled", e.clone(), Duration::ZERO),
                Outcome::Requeue => ("requeue", String::new(), Duration::ZERO),
            };
            args.push(kind.to_owned());
            args.push(payload);
            args.push(ms(delay));
        }
        let keys = vec![
            self.keys.worker_active(worker_id),
            self.keys.dead(),
            self.keys.done(),
            self.keys.stats(),
        ];
        let reply = self.eval(&self.scripts.complete, keys, args).await?;
        reply
            .into_array()
            .iter()
            .map(|v| {
                let s = text(v);
                if s == "stale" {
                    Ok(Completed::Stale)
                } else {
                    TaskState::parse(&s)
                        .map(Completed::Applied)
                        .ok_or_else(|| protocol("complete reply"))
                }
            })
            .collect()
    }

    /// Stores progress of a running attempt. Returns false if the attempt is no longer current.
    pub async fn progress(
        &self,
        id: &str,
        fence: u64,
        progress: &Json,
    ) -> Result<bool, StoreError> {
        let reply = self
            .eval(
                &self.scripts.progress,
                vec![self.keys.task(id)],
                vec![
                    self.keys.namespace().to_owned(),
                    id.to_owned(),
                    fence.to_string(),
                    progress.to_string(),
                ],
            )
            .await?;
        Ok(int(&reply) == 1)
    }
}

/// What a heartbeat found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Heartbeat {
    /// False when renewing a lease that was already declared lost: the worker's tasks were recovered and
    /// may run elsewhere; it must abandon them and register again.
    pub alive: bool,
    /// Held tasks whose record moved on (recovered, expired, retried by hand): stop running them.
    pub stop: Vec<String>,
    /// Held tasks whose cancellation was requested.
    pub cancel: Vec<String>,
    /// Tasks Redis had under this worker that it did not hold, now back in their queues.
    pub given_back: u64,
}

/// How [`TaskStore::heartbeat`] treats the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatMode {
    /// First registration (or again after a lost lease).
    Register,
    /// Renew the lease; fails if it was lost.
    Renew,
    /// Leave cleanly.
    Leave,
}

impl HeartbeatMode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Renew => "renew",
            Self::Leave => "leave",
        }
    }
}

/// Filter of [`TaskStore::list`].
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only these states (empty = all).
    pub states: Vec<TaskState>,
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this task type.
    pub name: Option<String>,
    /// Scan the dead-letter index instead of all tasks.
    pub dead_letter: bool,
}

impl ListFilter {
    fn matches(&self, r: &TaskRecord) -> bool {
        (self.states.is_empty() || self.states.contains(&r.state))
            && self.queue.as_ref().is_none_or(|q| *q == r.queue)
            && self.name.as_ref().is_none_or(|n| *n == r.name)
    }
}

/// Where a listing continues: opaque to callers, round-tripped as a page token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(String);

/// A parsed cursor: a stream entry and how many of its ids were consumed, or a dead-letter score and id.
enum Position {
    All(String, usize),
    Dead(u64, String),
}

impl Cursor {
    /// A cursor from a page token; whether it is well formed is checked when it is used.
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The page token.
    pub fn token(&self) -> &str {
        &self.0
    }

    /// Whether this token could have come from a listing of that index (`dead_letter` or not).
    pub fn is_valid_for(&self, dead_letter: bool) -> bool {
        self.position(dead_letter).is_some()
    }

    fn position(&self, dead_letter: bool) -> Option<Position> {
        if dead_letter {
            let (score, id) = self.0.split_once(':')?;
            return Some(Position::Dead(score.parse().ok()?, id.to_owned()));
        }
        let (entry, skip) = self.0.split_once('/')?;
        let (ms, seq) = entry.split_once('-')?;
        ms.parse::<u64>().ok()?;
        seq.parse::<u64>().ok()?;
        Some(Position::All(entry.to_owned(), skip.parse().ok()?))
    }
}

/// XREVRANGE's reply: `[[entry id, ["ids", "id id ..."]], ...]`.
fn stream_entries(reply: Value) -> Result<Vec<(String, Vec<String>)>, StoreError> {
    reply
        .into_array()
        .into_iter()
        .map(|e| {
            let mut parts = e.into_array().into_iter();
            let id = parts
                .next()
                .map(|v| text(&v))
                .ok_or_else(|| protocol("stream entry"))?;
            let fields = parts.next().map(Value::into_array).unwrap_or_default();
            let ids = fields
                .get(1)
                .map(text)
                .unwrap_or_default()
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            Ok((id, ids))
        })
        .collect()
}

/// One page of [`TaskStore::list`].
#[derive(Debug, Clone)]
pub struct ListPage {
    /// Matching tasks, newest first.
    pub tasks: Vec<TaskRecord>,
    /// Cursor of the next page.
    pub next: Option<Cursor>,
}
