//! Retry delays: exponential backoff with jitter.
//!
//! `delay(n) = random in [½·d, d]` where `d = min(cap, base · 2ⁿ)` and `n` counts the retries already made.
//! Half the delay is guaranteed (a failing dependency gets real breathing room), the other half is random
//! (retries of many tasks that failed together spread out instead of hammering the dependency in lockstep).

use std::time::Duration;

use rand::Rng;

/// Backoff settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry, before jitter.
    pub base: Duration,
    /// Upper bound of any delay.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(600),
        }
    }
}

impl Backoff {
    /// The un-jittered delay before retry number `retries + 1`.
    pub fn ceiling(&self, retries: u32) -> Duration {
        let factor = 2u32.saturating_pow(retries.min(31));
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The delay before retry number `retries + 1`, jittered with `rng`.
    pub fn delay(&self, retries: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(retries);
        let half = ceiling / 2;
        let spread = (ceiling - half).as_millis() as u64;
        half + Duration::from_millis(if spread == 0 {
            0
        } else {
            rng.random_range(0..=spread)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn delays_grow_exponentially_stay_jittered_and_capped() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
        };
        let mut rng = StdRng::seed_from_u64(7);
        for retries in 0..40 {
            let ceiling = b.ceiling(retries);
            assert!(ceiling <= b.cap);
            if retries < 5 {
                assert_eq!(ceiling, Duration::from_millis(100 << retries));
            }
            for _ in 0..50 {
                let d = b.delay(retries, &mut rng);
                assert!(
                    d >= ceiling / 2 && d <= ceiling,
                    "{d:?} outside [{:?}, {ceiling:?}]",
                    ceiling / 2
                );
            }
        }
    }

    #[test]
    fn jitter_actually_varies() {
        let b = Backoff::default();
        let mut rng = StdRng::seed_from_u64(1);
        let delays: std::collections::HashSet<_> = (0..20).map(|_| b.delay(3, &mut rng)).collect();
        assert!(delays.len() > 10);
    }
}
