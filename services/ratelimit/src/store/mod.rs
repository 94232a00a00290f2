//! Counter stores: Redis (shared, the normal path) and process memory (the `local` failure mode).
//!
//! Both take a whole batch (every limit of one request) and decide it all-or-nothing: either every enforced
//! limit admits the request and every limit consumes its cost, or nothing is consumed anywhere.

pub mod keys;
pub mod memory;
pub mod model;
pub mod redis;
pub mod scripts;

use futures::future::BoxFuture;

use crate::limits::{Algorithm, Mode};

/// One limit of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchItem {
    /// Counter key from [`keys`].
    pub key: String,
    /// Counting algorithm.
    pub algorithm: Algorithm,
    /// Units per window.
    pub limit: u64,
    /// Window in ms.
    pub window_ms: u64,
    /// Units this request consumes (0 = look only).
    pub cost: u64,
    /// Enforced limits refuse the batch; shadow limits never do; quota limits do only all together.
    pub mode: Mode,
}

/// The answer for one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Verdict {
    /// This limit admits the request.
    pub allowed: bool,
    /// Units left after this request (counted as consumed when the limit admits it, even in a dry run).
    pub remaining: u64,
    /// Time until the limit is fully replenished.
    pub reset_after_ms: u64,
    /// Time until `cost` would fit, when refused.
    pub retry_after_ms: u64,
}

/// The answer for a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// The request is admitted (see [`admits`]).
    pub allowed: bool,
    /// One verdict per item, in order.
    pub verdicts: Vec<Verdict>,
}

/// How a batch is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    /// Consume when every enforced limit admits.
    Consume,
    /// Report only.
    DryRun,
}

/// Store failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Not connected, or no answer within the decision timeout.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store answered something the protocol does not allow (a bug or a foreign key).
    #[error("store protocol error: {0}")]
    Protocol(String),
}

/// A place where counters live.
pub trait Store: Send + Sync {
    /// Decides a batch atomically; `now_us` is used only by stores that do not keep their own clock.
    fn decide<'a>(
        &'a self,
        items: &'a [BatchItem],
        apply: Apply,
    ) -> BoxFuture<'a, Result<BatchOutcome, StoreError>>;

    /// Removes counters; returns how many existed.
    fn remove<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<u64, StoreError>>;
}

/// Limits of the same request decided outside a store (by their failure mode while Redis is away), which the
/// store's all-or-nothing rule must count with its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Elsewhere {
    /// An enforced limit refused.
    pub enforced_refused: bool,
    /// Quota-mode limits decided outside.
    pub quotas: usize,
    /// How many of them admit.
    pub quotas_admitted: usize,
}

impl Elsewhere {
    /// Counts one limit decided outside.
    pub fn add(&mut self, mode: Mode, allowed: bool) {
        match mode {
            Mode::Enforced => self.enforced_refused |= !allowed,
            Mode::Shadow => {}
            Mode::Quota => {
                self.quotas += 1;
                self.quotas_admitted += usize::from(allowed);
            }
        }
    }
}

/// The rule every store and the decision script apply: a request is admitted when no enforced limit refuses
/// and, if quota-mode limits apply, at least one of them admits. Shadow limits never count.
pub fn admits(verdicts: impl IntoIterator<Item = (Mode, bool)>, elsewhere: Elsewhere) -> bool {
    let mut all = elsewhere;
    for (mode, allowed) in verdicts {
        all.add(mode, allowed);
    }
    !all.enforced_refused && (all.quotas == 0 || all.quotas_admitted > 0)
}

/// Runs a batch through the model over any state lookup: the shared all-or-nothing rule of every store.
pub(crate) fn decide_with_model(
    items: &[BatchItem],
    states: &[Option<model::State>],
    now_us: u64,
    apply: Apply,
    elsewhere: Elsewhere,
) -> (BatchOutcome, Vec<Option<model::State>>) {
    let evaluations: Vec<_> = items
        .iter()
        .zip(states)
        .map(|(item, state)| model::evaluate(item, *state, now_us))
        .collect();
    let allowed = admits(
        items
            .iter()
            .zip(&evaluations)
            .map(|(item, e)| (item.mode, e.verdict.allowed)),
        elsewhere,
    );
    let consume = allowed && apply == Apply::Consume;
    let mut writes = Vec::with_capacity(items.len());
    let verdicts = items
        .iter()
        .zip(evaluations)
        .map(|(item, e)| {
            let mut verdict = e.verdict;
            if consume && verdict.allowed && item.cost > 0 {
                writes.push(Some(e.next));
            } else {
                writes.push(None);
                if !allowed && verdict.allowed {
                    // The request was refused, so this limit consumed nothing.
                    verdict.remaining = (verdict.remaining + item.cost).min(item.limit);
                }
            }
            verdict
        })
        .collect();
    (BatchOutcome { allowed, verdicts }, writes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_refused_by_an_enforced_limit_or_by_every_quota() {
        use Mode::{Enforced, Quota, Shadow};
        let none = Elsewhere::default();
        assert!(admits(
            [(Enforced, true), (Quota, false), (Quota, true)],
            none
        ));
        assert!(!admits(
            [(Enforced, true), (Quota, false), (Quota, false)],
            none
        ));
        assert!(!admits([(Enforced, false), (Quota, true)], none));
        assert!(admits([(Shadow, false), (Enforced, true)], none));
        assert!(admits([], none));
        // Limits decided outside the store (failure modes while Redis is away) count with the store's own.
        let mut open_quota = none;
        open_quota.add(Quota, true);
        assert!(admits([(Quota, false)], open_quota));
        let mut closed = none;
        closed.add(Enforced, false);
        assert!(!admits([(Enforced, true)], closed));
        assert!(!admits([], closed));
    }
}
