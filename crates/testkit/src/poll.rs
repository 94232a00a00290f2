//! Bounded polling: wait for a condition a test can observe, with a deadline, never a bare sleep.

use std::future::Future;
use std::time::{Duration, Instant};

/// How long [`assert_eventually!`](crate::assert_eventually) waits unless told otherwise: generous, since the
/// machines that run the suite are shared and a slow poll is not a failure.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// How often a condition is polled.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Polls `probe` until it returns `Some`, and returns that value.
///
/// # Panics
/// When `within` passes first, naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Polls a boolean condition (which may `.await`) until it holds, panicking with the message after a deadline
/// ([`PATIENCE`](crate::PATIENCE) unless `within = …` is given first).
///
/// ```ignore
/// assert_eventually!(within = Duration::from_secs(5), store.len().await == 3, "three entries");
/// assert_eventually!(ready(&client).await, "TaskService never became ready");
/// ```
#[macro_export]
macro_rules! assert_eventually {
    (within = $within:expr, $cond:expr, $($msg:tt)+) => {{
        let within: ::std::time::Duration = $within;
        let deadline = ::std::time::Instant::now() + within;
        loop {
            if $cond {
                break;
            }
            if ::std::time::Instant::now() >= deadline {
                panic!("not within {within:?}: {}", format_args!($($msg)+));
            }
            ::tokio::time::sleep(::std::time::Duration::from_millis(20)).await;
        }
    }};
    ($cond:expr, $($msg:tt)+) => {
        $crate::assert_eventually!(within = $crate::PATIENCE, $cond, $($msg)+)
    };
}
