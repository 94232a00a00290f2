//! The wall clock, read in one place.
//!
//! Stored task times and rate-limit windows come from Redis's clock (`TIME` inside the scripts), so that
//! hosts with skewed clocks agree. This clock serves what happens in one process: the in-process rate limiter
//! that covers a Redis outage, epoch timestamps in response headers, and metrics.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch (0 before it, which no clock this software runs on reads).
pub fn epoch_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Milliseconds since the Unix epoch.
pub fn epoch_ms() -> u64 {
    epoch_us() / 1000
}

/// Seconds since the Unix epoch.
pub fn epoch_secs() -> u64 {
    epoch_us() / 1_000_000
}
