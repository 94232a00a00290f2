//! Test support shared by every redline crate. Nothing here ships: production crates list this crate under
//! `[dev-dependencies]` only.
//!
//! - [`RedisServer`] and [`RedisCluster`]: private `redis-server` processes on free ports, which a test may
//!   kill, restart, pause (SIGSTOP) and reconfigure without touching any other Redis on the machine;
//! - [`assert_eventually!`] and [`eventually`]: bounded polling of an observable condition instead of sleeps;
//! - [`FaultProxy`]: a TCP proxy in front of Redis that partitions, delays, loses replies and fails over;
//! - [`Journal`]: an execution journal written by the [`Journaled`] test task, and the checker of a history
//!   (lost, stranded, concurrent and twice-finished tasks);
//! - [`Suite`]: TaskService, workers, RateLimitService and the gateway in this process over a private Redis,
//!   each stoppable and restartable on its port;
//! - [`free_port`], [`median`] and [`raw_get`]: the small helpers every test binary needed a copy of.

mod fault;
mod http;
mod journal;
mod poll;
mod redis;
mod suite;

pub use fault::FaultProxy;
pub use http::raw_get;
pub use journal::{
    Entry, Execution, History, Journal, JournalArgs, JournalTask, Journaled, Verdict,
};
pub use poll::{PATIENCE, eventually};
pub use redis::{RedisCluster, RedisServer, RedisServerBuilder};
pub use suite::{Reply, Suite, SuiteBuilder};

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// # Panics
/// When the loopback interface refuses a listener: nothing in a test binary can work then.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// A task store on `url` (connected before it returns), with the default queue settings but `lease`.
///
/// # Panics
/// When the URL is unusable or Redis does not answer.
pub async fn task_store(url: &str, lease: std::time::Duration) -> redline_taskqueue::TaskStore {
    use redline_taskqueue::connect::{self, RedisOptions};
    let client = connect::client(url, &RedisOptions::default()).expect("a Redis URL");
    fred::prelude::ClientLike::wait_for_connect(&client)
        .await
        .expect("Redis answers");
    redline_taskqueue::TaskStore::new(
        client,
        redline_taskqueue::QueueConfig {
            lease,
            ..Default::default()
        },
    )
}

/// The median of `values` (the upper one of an even count); `None` when empty.
pub fn median<T: PartialOrd + Copy>(mut values: Vec<T>) -> Option<T> {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values.get(values.len() / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_takes_the_middle_value() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4, 1, 3, 2]), Some(3));
        assert_eq!(median(Vec::<u64>::new()), None);
    }
}
