//! The decision engine: resolves the limits of a request, asks Redis, and applies failure modes.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::limits::{FailureMode, LimitDef, MAX_LIMIT, MAX_WINDOW_MS, Mode};
use crate::rules::{Match, RuleSet, RulesError};
use crate::store::keys::{KeyError, KeySpace};
use crate::store::memory::MemoryStore;
use crate::store::{Apply, BatchItem, BatchOutcome, Elsewhere, Store, StoreError, Verdict};

/// Most descriptors in one request.
pub const MAX_DESCRIPTORS: usize = 16;
/// Most limits applied to one request.
pub const MAX_LIMITS: usize = 64;
/// Largest cost of one request.
pub const MAX_COST: u64 = 1_000_000;

/// Why a decision could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// The request is malformed; retrying it unchanged will fail again.
    #[error("{0}")]
    InvalidArgument(String),
    /// The domain has no rules and the request brings no limits of its own.
    #[error("unknown domain {0:?}")]
    UnknownDomain(String),
    /// Redis did not answer in time and a limit's failure mode is `error`.
    #[error("rate-limit store unavailable")]
    Unavailable(#[source] StoreError),
    /// Redis answered nonsense (a foreign key under our prefix, or a bug).
    #[error("rate-limit store error")]
    Store(#[source] StoreError),
    /// The rule file was rejected; the previous rules stay in force.
    #[error("rule file rejected: {0}")]
    Config(#[from] RulesError),
    /// Reload was asked but the service runs without a rule file.
    #[error("no rule file configured")]
    NoConfigFile,
}

impl From<KeyError> for LimitError {
    fn from(e: KeyError) -> Self {
        Self::InvalidArgument(e.to_string())
    }
}

/// One descriptor of a request.
#[derive(Debug, Clone, Default)]
pub struct DescriptorRequest {
    /// Ordered entries.
    pub entries: Vec<(String, String)>,
    /// Caller-supplied limits; when `Some`, rules are not consulted.
    pub limits: Option<Vec<LimitDef>>,
    /// Units consumed (0 = look only).
    pub cost: u64,
}

/// What to do with a domain that has no rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownDomain {
    /// Fail with [`LimitError::UnknownDomain`] (the redline API: a typo must not silently disable limits).
    Reject,
    /// No limit applies (envoyproxy/ratelimit's behaviour, kept for Envoy compatibility).
    Allow,
}

/// A request to decide.
#[derive(Debug, Clone)]
pub struct DecisionRequest {
    /// Rule namespace.
    pub domain: String,
    /// Descriptors.
    pub descriptors: Vec<DescriptorRequest>,
    /// Report without consuming.
    pub dry_run: bool,
    /// Unknown-domain policy.
    pub unknown_domain: UnknownDomain,
}

/// Where one limit's answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Redis.
    Redis,
    /// Redis unreachable; failed open.
    FailedOpen,
    /// Redis unreachable; failed closed.
    FailedClosed,
    /// Redis unreachable; decided in process memory.
    Local,
}

/// One applied limit after a decision.
#[derive(Debug, Clone)]
pub struct LimitResult {
    /// Index of the descriptor in the request.
    pub descriptor_index: usize,
    /// The limit.
    pub def: LimitDef,
    /// Its verdict.
    pub verdict: Verdict,
    /// Where the verdict came from.
    pub source: Source,
}

/// A decision.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Every enforced limit admits the request.
    pub allowed: bool,
    /// Every applied limit, in descriptor order.
    pub limits: Vec<LimitResult>,
    /// Descriptors whose rule says `unlimited`.
    pub unlimited: Vec<bool>,
    /// At least one limit was decided without Redis.
    pub degraded: bool,
}

impl Decision {
    /// Whether this limit's refusal counts: an enforced limit that refused, or a quota-mode limit that refused
    /// when the request was refused (every quota spent). A refused shadow limit, or a spent quota while
    /// another quota still admits, only reports.
    pub fn refuses(&self, limit: &LimitResult) -> bool {
        !limit.verdict.allowed
            && match limit.def.mode {
                Mode::Enforced => true,
                Mode::Shadow => false,
                Mode::Quota => !self.allowed,
            }
    }

    /// The limit that refused with the longest wait.
    pub fn refused_by(&self) -> Option<&LimitResult> {
        self.limits
            .iter()
            .filter(|l| self.refuses(l))
            .max_by_key(|l| l.verdict.retry_after_ms)
    }

    /// Quota-mode limits that are spent while the request was admitted (envoyproxy/ratelimit reports their
    /// descriptors as `quotaModeViolations`).
    pub fn spent_quotas(&self) -> impl Iterator<Item = &LimitResult> {
        self.limits
            .iter()
            .filter(|l| l.def.mode == Mode::Quota && !l.verdict.allowed && self.allowed)
    }
}

/// Counts of decisions by source, for logs and listings.
#[derive(Debug, Default)]
pub struct Stats {
    /// Decisions answered by Redis.
    pub redis: AtomicU64,
    /// Limits that failed open.
    pub failed_open: AtomicU64,
    /// Limits that failed closed.
    pub failed_closed: AtomicU64,
    /// Limits decided locally.
    pub local: AtomicU64,
    /// Decisions that failed with UNAVAILABLE.
    pub unavailable: AtomicU64,
}

/// Applied limits (descriptor index, limit, batch item) and the descriptors whose rule is `unlimited`.
type Resolved = (Vec<(usize, LimitDef, BatchItem)>, Vec<bool>);

/// One limit that applies to a request, before `replaces` is resolved.
struct Matched {
    /// Which descriptor of the request.
    index: usize,
    def: LimitDef,
    /// Names this (configured) limit replaces.
    replaces: Vec<String>,
    /// From the rule file, not supplied by the caller.
    configured: bool,
    /// Entries to count under when they differ from the descriptor's (`share_threshold`).
    counted: Option<Vec<(String, String)>>,
}

/// The decision engine, shared by every RPC.
pub struct Limiter {
    rules: RwLock<Arc<RuleSet>>,
    config_path: Option<PathBuf>,
    keys: KeySpace,
    store: Arc<dyn Store>,
    memory: MemoryStore,
    timeout: Duration,
    store_up: AtomicBool,
    /// Decision counters.
    pub stats: Stats,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("keys", &self.keys)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Limiter {
    /// A limiter over `store`, with `rules` loaded from `config_path` (if any).
    pub fn new(
        rules: RuleSet,
        config_path: Option<PathBuf>,
        keys: KeySpace,
        store: Arc<dyn Store>,
        timeout: Duration,
        local_max_keys: usize,
    ) -> Self {
        Self {
            rules: RwLock::new(Arc::new(rules)),
            config_path,
            keys,
            store,
            memory: MemoryStore::new(local_max_keys),
            timeout,
            // Unknown until the first answer or probe; readiness starts NOT_SERVING.
            store_up: AtomicBool::new(false),
            stats: Stats::default(),
        }
    }

    /// The rules in force.
    pub fn rules(&self) -> Arc<RuleSet> {
        match self.rules.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The rule file, if any.
    pub fn config_path(&self) -> Option<&PathBuf> {
        self.config_path.as_ref()
    }

    /// Whether the last Redis call succeeded.
    pub fn store_available(&self) -> bool {
        self.store_up.load(Ordering::Relaxed)
    }

    /// Records a health probe result, logging transitions once.
    pub fn set_store_available(&self, up: bool) {
        let was = self.store_up.swap(up, Ordering::Relaxed);
        metrics::gauge!("redline_ratelimit_redis_up").set(if up { 1.0 } else { 0.0 });
        if was && !up {
            tracing::warn!(
                "Redis unreachable: limits now follow their failure_mode (error → UNAVAILABLE, open → allow, closed → refuse, local → process memory)"
            );
        } else if !was && up {
            tracing::info!("Redis reachable: limits are decided in Redis");
        }
    }

    /// Re-reads the rule file. On error the previous rules stay in force.
    pub fn reload(&self) -> Result<Arc<RuleSet>, LimitError> {
        let path = self.config_path.as_ref().ok_or(LimitError::NoConfigFile)?;
        let fresh = Arc::new(RuleSet::load(path)?);
        match self.rules.write() {
            Ok(mut r) => *r = fresh.clone(),
            Err(poisoned) => *poisoned.into_inner() = fresh.clone(),
        }
        Ok(fresh)
    }

    /// Replaces the rules (tests and embedders).
    pub fn set_rules(&self, rules: RuleSet) {
        let fresh = Arc::new(rules);
        match self.rules.write() {
            Ok(mut r) => *r = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
    }

    /// Resolves the limits of a request and their counter keys.
    fn resolve(&self, req: &DecisionRequest) -> Result<Resolved, LimitError> {
        if req.descriptors.is_empty() {
            return Err(LimitError::InvalidArgument(
                "at least one descriptor (or a key) is required".to_owned(),
            ));
        }
        if req.descriptors.len() > MAX_DESCRIPTORS {
            return Err(LimitError::InvalidArgument(format!(
                "at most {MAX_DESCRIPTORS} descriptors per request"
            )));
        }
        let rules = self.rules();
        let mut matched: Vec<Matched> = Vec::new();
        let mut unlimited = vec![false; req.descriptors.len()];
        for (index, d) in req.descriptors.iter().enumerate() {
            KeySpace::validate(&req.domain, &d.entries)?;
            if d.cost > MAX_COST {
                return Err(LimitError::InvalidArgument(format!(
                    "cost {} is above the maximum {MAX_COST}",
                    d.cost
                )));
            }
            if let Some(own) = &d.limits {
                for def in own {
                    validate_caller_limit(def)?;
                    matched.push(Matched {
                        index,
                        def: def.clone(),
                        replaces: Vec::new(),
                        configured: false,
                        counted: None,
                    });
                }
                continue;
            }
            if !rules.has_domain(&req.domain) && req.unknown_domain == UnknownDomain::Reject {
                return Err(LimitError::UnknownDomain(req.domain.clone()));
            }
            match rules.find(&req.domain, &d.entries) {
                Match::None => {}
                Match::Unlimited => unlimited[index] = true,
                Match::Limits(found, counted) => {
                    for rule in found {
                        matched.push(Matched {
                            index,
                            def: rule.def.clone(),
                            replaces: rule.replaces.clone(),
                            configured: true,
                            counted: counted.clone(),
                        });
                    }
                }
            }
        }
        // `replaces`: a matched named limit removes every other matched configured limit of that name.
        let replaced: HashSet<&str> = matched
            .iter()
            .flat_map(|m| m.replaces.iter().map(String::as_str))
            .collect();
        let mut out = Vec::with_capacity(matched.len());
        for Matched {
            index,
            def,
            configured,
            counted,
            ..
        } in &matched
        {
            if *configured && replaced.contains(def.name.as_str()) {
                continue;
            }
            let d = &req.descriptors[*index];
            let entries = counted.as_deref().unwrap_or(&d.entries);
            let key = self.keys.counter(&req.domain, entries, def)?;
            let item = BatchItem {
                key,
                algorithm: def.algorithm,
                limit: def.limit,
                window_ms: def.window_ms,
                cost: d.cost,
                mode: def.mode,
            };
            out.push((*index, def.clone(), item));
        }
        if out.len() > MAX_LIMITS {
            return Err(LimitError::InvalidArgument(format!(
                "at most {MAX_LIMITS} limits per request"
            )));
        }
        Ok((out, unlimited))
    }

    /// Decides a request.
    pub async fn decide(&self, req: &DecisionRequest) -> Result<Decision, LimitError> {
        let (resolved, unlimited) = self.resolve(req)?;
        let apply = if req.dry_run {
            Apply::DryRun
        } else {
            Apply::Consume
        };
        if resolved.is_empty() {
            return Ok(Decision {
                allowed: true,
                limits: Vec::new(),
                unlimited,
                degraded: false,
            });
        }
        let items: Vec<BatchItem> = resolved.iter().map(|(_, _, i)| i.clone()).collect();
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(self.timeout, self.store.decide(&items, apply)).await;
        let result = match &answer {
            Ok(Ok(_)) => "ok",
            Ok(Err(_)) => "error",
            Err(_) => "timeout",
        };
        metrics::histogram!("redline_ratelimit_store_seconds", "result" => result)
            .record(started.elapsed().as_secs_f64());
        let decision = self.conclude(resolved, unlimited, apply, answer);
        if let Ok(d) = &decision
            && apply == Apply::Consume
        {
            record_decision(&req.domain, d);
        }
        decision
    }

    /// Turns the store's answer (or its absence) into a decision, falling back when Redis did not answer.
    fn conclude(
        &self,
        resolved: Vec<(usize, LimitDef, BatchItem)>,
        unlimited: Vec<bool>,
        apply: Apply,
        answer: Result<Result<BatchOutcome, StoreError>, tokio::time::error::Elapsed>,
    ) -> Result<Decision, LimitError> {
        let error = match answer {
            Ok(Ok(outcome)) => {
                self.stats.redis.fetch_add(1, Ordering::Relaxed);
                if !self.store_up.load(Ordering::Relaxed) {
                    self.set_store_available(true);
                }
                let limits = resolved
                    .into_iter()
                    .zip(outcome.verdicts)
                    .map(|((descriptor_index, def, _), verdict)| LimitResult {
                        descriptor_index,
                        def,
                        verdict,
                        source: Source::Redis,
                    })
                    .collect();
                return Ok(Decision {
                    allowed: outcome.allowed,
                    limits,
                    unlimited,
                    degraded: false,
                });
            }
            Ok(Err(StoreError::Protocol(e))) => {
                return Err(LimitError::Store(StoreError::Protocol(e)));
            }
            Ok(Err(e)) => e,
            Err(_) => StoreError::Unavailable(format!("no answer within {:?}", self.timeout)),
        };
        self.set_store_available(false);
        self.fallback(resolved, unlimited, apply, error)
    }

    fn fallback(
        &self,
        resolved: Vec<(usize, LimitDef, BatchItem)>,
        unlimited: Vec<bool>,
        apply: Apply,
        error: StoreError,
    ) -> Result<Decision, LimitError> {
        if resolved
            .iter()
            .any(|(_, d, _)| d.failure_mode == FailureMode::Error)
        {
            self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("redline_ratelimit_failure_mode_total", "mode" => "error")
                .increment(1);
            return Err(LimitError::Unavailable(error));
        }
        // Open and closed limits answer without a store; the local store counts them with its own limits, so
        // that a request refused by a closed limit consumes nothing locally either (all-or-nothing).
        let mut elsewhere = Elsewhere::default();
        for (_, d, _) in &resolved {
            match d.failure_mode {
                FailureMode::Open => elsewhere.add(d.mode, true),
                FailureMode::Closed => elsewhere.add(d.mode, false),
                FailureMode::Local | FailureMode::Error => {}
            }
        }
        let local: Vec<BatchItem> = resolved
            .iter()
            .filter(|(_, d, _)| d.failure_mode == FailureMode::Local)
            .map(|(_, _, i)| i.clone())
            .collect();
        let local_outcome = self.memory.decide_with(&local, apply, now_us(), elsewhere);
        let mut local_verdicts = local_outcome.verdicts.into_iter();
        let mut limits = Vec::with_capacity(resolved.len());
        for (descriptor_index, def, item) in resolved {
            metrics::counter!("redline_ratelimit_failure_mode_total", "mode" => def.failure_mode.as_str())
                .increment(1);
            let (verdict, source) = match def.failure_mode {
                FailureMode::Open => {
                    self.stats.failed_open.fetch_add(1, Ordering::Relaxed);
                    (
                        Verdict {
                            allowed: true,
                            remaining: def.limit.saturating_sub(item.cost),
                            reset_after_ms: 0,
                            retry_after_ms: 0,
                        },
                        Source::FailedOpen,
                    )
                }
                FailureMode::Closed => {
                    self.stats.failed_closed.fetch_add(1, Ordering::Relaxed);
                    // Retry once Redis may be back: one second, or the window if shorter.
                    let retry = def.window_ms.min(1000);
                    (
                        Verdict {
                            allowed: false,
                            remaining: 0,
                            reset_after_ms: retry,
                            retry_after_ms: retry,
                        },
                        Source::FailedClosed,
                    )
                }
                FailureMode::Local => {
                    self.stats.local.fetch_add(1, Ordering::Relaxed);
                    (local_verdicts.next().unwrap_or_default(), Source::Local)
                }
                FailureMode::Error => unreachable_error_mode(),
            };
            limits.push(LimitResult {
                descriptor_index,
                def,
                verdict,
                source,
            });
        }
        tracing::debug!(
            allowed = local_outcome.allowed,
            local = local.len(),
            "decided without Redis"
        );
        Ok(Decision {
            allowed: local_outcome.allowed,
            limits,
            unlimited,
            degraded: true,
        })
    }

    /// Current counters of a request's limits, consuming nothing.
    pub async fn inspect(&self, req: &DecisionRequest) -> Result<Decision, LimitError> {
        let mut peek = req.clone();
        peek.dry_run = true;
        for d in &mut peek.descriptors {
            d.cost = 0;
        }
        self.decide(&peek).await
    }

    /// Forgets the counters of a request's limits (in Redis and in process memory).
    pub async fn reset(&self, req: &DecisionRequest) -> Result<u64, LimitError> {
        let (resolved, _) = self.resolve(req)?;
        let keys: Vec<String> = resolved.into_iter().map(|(_, _, i)| i.key).collect();
        let local = self.memory.remove(&keys).await.unwrap_or(0);
        match tokio::time::timeout(self.timeout * 10, self.store.remove(&keys)).await {
            Ok(Ok(n)) => Ok(n.max(local)),
            Ok(Err(e @ StoreError::Protocol(_))) => Err(LimitError::Store(e)),
            Ok(Err(e)) => Err(LimitError::Unavailable(e)),
            Err(_) => Err(LimitError::Unavailable(StoreError::Unavailable(
                "reset timed out".to_owned(),
            ))),
        }
    }

    /// Number of counters held in process memory.
    pub fn local_keys(&self) -> usize {
        self.memory.len()
    }
}

/// `fallback` returns early when any limit's mode is `Error`, so this arm cannot be reached; it answers like
/// a closed limit rather than panicking.
/// Counts each applied limit of a consuming decision by rule, outcome and where it was decided.
fn record_decision(domain: &str, decision: &Decision) {
    for l in &decision.limits {
        let outcome = match (l.verdict.allowed, l.def.mode) {
            (true, _) => "allowed",
            // Shadow mode: would have refused, but only reports.
            (false, Mode::Shadow) => "shadow_refused",
            (false, _) if decision.refuses(l) => "refused",
            // A spent quota while another quota of the request still admitted it.
            (false, _) => "quota_exceeded",
        };
        let source = match l.source {
            Source::Redis => "redis",
            Source::FailedOpen => "failed_open",
            Source::FailedClosed => "failed_closed",
            Source::Local => "local",
        };
        metrics::counter!(
            "redline_ratelimit_decisions_total",
            "domain" => domain.to_owned(),
            "rule" => l.def.name.clone(),
            "outcome" => outcome,
            "source" => source
        )
        .increment(1);
    }
}

fn unreachable_error_mode() -> (Verdict, Source) {
    (Verdict::default(), Source::FailedClosed)
}

fn validate_caller_limit(def: &LimitDef) -> Result<(), LimitError> {
    if def.limit == 0 || def.limit > MAX_LIMIT {
        return Err(LimitError::InvalidArgument(format!(
            "limit {:?}: amount must be between 1 and {MAX_LIMIT}",
            def.name
        )));
    }
    if def.window_ms == 0 || def.window_ms > MAX_WINDOW_MS {
        return Err(LimitError::InvalidArgument(format!(
            "limit {:?}: window must be between 1 ms and 10 years",
            def.name
        )));
    }
    Ok(())
}

fn now_us() -> u64 {
    redline_runtime::clock::epoch_us()
}
