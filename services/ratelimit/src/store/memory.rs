//! The in-process store behind the `local` failure mode (Flask-Limiter's `memory://`, done safely).
//!
//! Bounded: at most `max_keys` counters. When full, expired counters are swept; if none expired, the counter
//! that expires first is dropped (forgiving its client early rather than growing without bound). State here is
//! per instance and lost on restart; it only covers Redis outages.

use std::collections::HashMap;
use std::sync::Mutex;

use futures::FutureExt;
use futures::future::BoxFuture;

use super::model::State;
use super::{Apply, BatchItem, BatchOutcome, Elsewhere, Store, StoreError, decide_with_model};

struct Slot {
    state: State,
    expires_ms: u64,
}

/// Counters in process memory.
pub struct MemoryStore {
    slots: Mutex<HashMap<String, Slot>>,
    max_keys: usize,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("max_keys", &self.max_keys)
            .field("len", &self.len())
            .finish()
    }
}

fn now_us() -> u64 {
    redline_runtime::clock::epoch_us()
}

impl MemoryStore {
    /// An empty store holding at most `max_keys` counters (at least 1).
    pub fn new(max_keys: usize) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            max_keys: max_keys.max(1),
        }
    }

    /// Number of live counters (exported so operators can watch the bound).
    pub fn len(&self) -> usize {
        self.slots.lock().map_or(0, |s| s.len())
    }

    /// Whether no counter is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decides a batch at an explicit time (µs).
    pub fn decide_at(&self, items: &[BatchItem], apply: Apply, now_us: u64) -> BatchOutcome {
        self.decide_with(items, apply, now_us, Elsewhere::default())
    }

    /// Decides a batch at an explicit time (µs), counting limits of the same request decided `elsewhere`.
    pub fn decide_with(
        &self,
        items: &[BatchItem],
        apply: Apply,
        now_us: u64,
        elsewhere: Elsewhere,
    ) -> BatchOutcome {
        let now_ms = now_us / 1000;
        let mut slots = match self.slots.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let states: Vec<Option<State>> = items
            .iter()
            .map(|i| {
                slots
                    .get(&i.key)
                    .filter(|s| s.expires_ms > now_ms)
                    .map(|s| s.state)
            })
            .collect();
        let (outcome, writes) = decide_with_model(items, &states, now_us, apply, elsewhere);
        for (item, write) in items.iter().zip(writes) {
            let Some(state) = write else { continue };
            if !slots.contains_key(&item.key) && slots.len() >= self.max_keys {
                slots.retain(|_, s| s.expires_ms > now_ms);
                if slots.len() >= self.max_keys
                    && let Some(victim) = slots
                        .iter()
                        .min_by_key(|(_, s)| s.expires_ms)
                        .map(|(k, _)| k.clone())
                {
                    slots.remove(&victim);
                }
            }
            slots.insert(
                item.key.clone(),
                Slot {
                    state,
                    expires_ms: state.expires_ms(item.window_ms),
                },
            );
        }
        outcome
    }
}

impl Store for MemoryStore {
    fn decide<'a>(
        &'a self,
        items: &'a [BatchItem],
        apply: Apply,
    ) -> BoxFuture<'a, Result<BatchOutcome, StoreError>> {
        let outcome = self.decide_at(items, apply, now_us());
        async move { Ok(outcome) }.boxed()
    }

    fn remove<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<u64, StoreError>> {
        let mut removed = 0;
        if let Ok(mut slots) = self.slots.lock() {
            for key in keys {
                removed += u64::from(slots.remove(key).is_some());
            }
        }
        async move { Ok(removed) }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Algorithm;

    fn item(key: &str, limit: u64) -> BatchItem {
        BatchItem {
            key: key.to_owned(),
            algorithm: Algorithm::FixedWindow,
            limit,
            window_ms: 60_000,
            cost: 1,
            mode: crate::limits::Mode::Enforced,
        }
    }

    #[test]
    fn stays_within_its_key_bound() {
        let store = MemoryStore::new(3);
        for i in 0..10 {
            store.decide_at(&[item(&format!("k{i}"), 5)], Apply::Consume, 1_000_000 + i);
        }
        assert_eq!(store.len(), 3);
    }

    #[test]
    fn refused_batches_consume_nothing() {
        let store = MemoryStore::new(10);
        let batch = [item("a", 5), item("b", 1)];
        assert!(store.decide_at(&batch, Apply::Consume, 1_000_000).allowed);
        let second = store.decide_at(&batch, Apply::Consume, 1_000_000);
        assert!(!second.allowed);
        assert_eq!(second.verdicts[0].remaining, 4, "a keeps its quota");
    }
}
