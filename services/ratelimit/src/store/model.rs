//! The three algorithms as pure functions over explicit state and time.
//!
//! This is the reference model: the Lua script in [`super::scripts`] performs exactly these steps (same integer
//! arithmetic, same `f64` operations in the same order, so results are bit-identical), the in-process fallback
//! store runs it directly, and the property tests compare Redis's answers with it decision by decision.

use super::{BatchItem, Verdict};
use crate::limits::Algorithm;

/// Stored state of one counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Fixed window: count and the absolute end of the window (ms).
    Fixed {
        /// Units consumed in the window.
        count: u64,
        /// Window end, Unix ms.
        ends_ms: u64,
    },
    /// Sliding window counter: epoch-aligned window id, its count and the previous window's count.
    Sliding {
        /// `floor(now_ms / window)` of `current`.
        window_id: u64,
        /// Units in window `window_id`.
        current: u64,
        /// Units in window `window_id - 1`.
        previous: u64,
    },
    /// GCRA: theoretical arrival time (µs).
    Gcra {
        /// Theoretical arrival time, Unix µs.
        tat_us: u64,
    },
}

impl State {
    /// When this state stops mattering (Unix ms), for eviction from memory.
    pub fn expires_ms(&self, window_ms: u64) -> u64 {
        match *self {
            Self::Fixed { ends_ms, .. } => ends_ms,
            Self::Sliding { window_id, .. } => (window_id + 2).saturating_mul(window_ms),
            Self::Gcra { tat_us } => tat_us.div_ceil(1000),
        }
    }
}

/// Result of evaluating one limit: the verdict and the state to store if the batch is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evaluation {
    /// What the caller sees.
    pub verdict: Verdict,
    /// State after consuming `cost`.
    pub next: State,
}

/// GCRA emission interval in µs, rounded up so the bucket never refills faster than `limit` per window.
pub fn emission_interval_us(limit: u64, window_ms: u64) -> u64 {
    (window_ms * 1000).div_ceil(limit)
}

/// Evaluates one limit at `now_us` without changing anything.
pub fn evaluate(item: &BatchItem, state: Option<State>, now_us: u64) -> Evaluation {
    let now_ms = now_us / 1000;
    let (limit, window, cost) = (item.limit, item.window_ms, item.cost);
    match item.algorithm {
        Algorithm::FixedWindow => {
            let (mut count, mut ends) = match state {
                Some(State::Fixed { count, ends_ms }) => (count, ends_ms),
                _ => (0, 0),
            };
            if ends == 0 || now_ms >= ends {
                count = 0;
                ends = now_ms + window;
            }
            let allowed = count + cost <= limit;
            let used = if allowed { count + cost } else { count };
            let left = ends - now_ms;
            Evaluation {
                verdict: Verdict {
                    allowed,
                    remaining: limit.saturating_sub(used),
                    reset_after_ms: if used == 0 { 0 } else { left },
                    retry_after_ms: if allowed { 0 } else { left },
                },
                next: State::Fixed {
                    count: count + cost,
                    ends_ms: ends,
                },
            }
        }
        Algorithm::SlidingWindow => {
            let id = now_ms / window;
            let elapsed = now_ms - id * window;
            let (current, previous) = match state {
                Some(State::Sliding {
                    window_id,
                    current,
                    previous,
                }) => {
                    if window_id == id {
                        (current, previous)
                    } else if window_id + 1 == id {
                        (0, current)
                    } else {
                        (0, 0)
                    }
                }
                _ => (0, 0),
            };
            let weighted =
                ((previous as f64) * ((window - elapsed) as f64) / (window as f64)).floor();
            let estimate = weighted as u64 + current;
            let allowed = estimate + cost <= limit;
            let used = if allowed { estimate + cost } else { estimate };
            let current_after = if allowed { current + cost } else { current };
            let reset_after_ms = if current_after > 0 {
                2 * window - elapsed
            } else if previous > 0 {
                window - elapsed
            } else {
                0
            };
            let retry_after_ms = if allowed {
                0
            } else {
                sliding_retry_after(limit, window, cost, current, previous, elapsed)
            };
            Evaluation {
                verdict: Verdict {
                    allowed,
                    remaining: limit.saturating_sub(used),
                    reset_after_ms,
                    retry_after_ms,
                },
                next: State::Sliding {
                    window_id: id,
                    current: current + cost,
                    previous,
                },
            }
        }
        Algorithm::Gcra => {
            let interval = emission_interval_us(limit.max(1), window);
            let capacity = limit * interval;
            let tat = match state {
                Some(State::Gcra { tat_us }) => tat_us.max(now_us),
                _ => now_us,
            };
            let new_tat = tat + cost * interval;
            let allowed = new_tat - now_us <= capacity;
            let backlog = if allowed { new_tat } else { tat } - now_us;
            Evaluation {
                verdict: Verdict {
                    allowed,
                    remaining: capacity.saturating_sub(backlog) / interval,
                    reset_after_ms: backlog.div_ceil(1000),
                    retry_after_ms: if allowed {
                        0
                    } else {
                        (new_tat - now_us - capacity).div_ceil(1000)
                    },
                },
                next: State::Gcra { tat_us: new_tat },
            }
        }
    }
}

/// Smallest wait after which `cost` fits under the sliding estimate (rounded up: never too early).
fn sliding_retry_after(
    limit: u64,
    window: u64,
    cost: u64,
    current: u64,
    previous: u64,
    elapsed: u64,
) -> u64 {
    let room = limit as f64 - cost as f64 - current as f64;
    if cost > limit {
        // Never fits; report the time until both windows are empty.
        2 * window - elapsed
    } else if room >= 0.0 {
        // Fits later in this window, once the previous window's weight has decayed enough.
        let wait = ((window - elapsed) as f64 - room * (window as f64) / (previous as f64)).ceil();
        (wait as u64).max(1)
    } else {
        // Fits only in the next window, once this window (then "previous") has decayed enough.
        let later = ((window as f64)
            - ((limit - cost) as f64) * (window as f64) / ((current.max(1)) as f64))
            .ceil();
        (window - elapsed) + (later.max(0.0) as u64)
    }
}
