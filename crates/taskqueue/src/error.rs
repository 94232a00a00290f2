//! Errors of the task store, classified by what the caller should do.

/// What went wrong talking to the queue.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis is unreachable, timed out, or cannot take writes for now (out of memory, a read-only replica
    /// during a failover, loading, busy with a script): retry later. Nothing was changed, or the change is
    /// unknown.
    #[error("redis unavailable: {0}")]
    Unavailable(#[source] fred::error::Error),
    /// Redis answered something this version does not understand (a bug or a foreign key).
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
    /// Redis refused a command (script error, wrong type, out of memory).
    #[error("redis error: {0}")]
    Redis(#[source] fred::error::Error),
    /// A listing cursor that no listing of that index returned.
    #[error("not a page token returned by this listing")]
    BadCursor,
    /// A new queue name would exceed the namespace's cap on queues; nothing of the call was stored.
    #[error("the namespace already has its maximum of {max} queues; submit to an existing queue")]
    TooManyQueues {
        /// The cap.
        max: u64,
    },
}

impl StoreError {
    /// True when the failure is about reaching Redis, not about the request.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Error replies that describe Redis's condition, not the request: each clears by itself (memory is freed or
/// records expire, a failover completes, a load or a long script ends, the disk recovers), so the same
/// command may succeed later.
const TRANSIENT: &[&str] = &[
    "OOM",
    "READONLY",
    "MASTERDOWN",
    "LOADING",
    "BUSY",
    "NOREPLICAS",
    "CLUSTERDOWN",
    "TRYAGAIN",
    "MISCONF",
];

/// fred's own words for "no connection to send on right now" (between a reset and the reconnection), which
/// it reports with no error kind of their own: the command was not sent, and may be sent again later.
const NOT_CONNECTED: &[&str] = &[
    "Failed to route command",
    "Too many failed write attempts",
    "Missing response",
];

impl From<fred::error::Error> for StoreError {
    fn from(e: fred::error::Error) -> Self {
        use fred::error::ErrorKind;
        match e.kind() {
            ErrorKind::IO
            | ErrorKind::Timeout
            | ErrorKind::Canceled
            | ErrorKind::Backpressure
            | ErrorKind::Cluster
            | ErrorKind::Routing
            | ErrorKind::Sentinel => Self::Unavailable(e),
            _ if TRANSIENT.iter().any(|p| e.details().starts_with(p)) => Self::Unavailable(e),
            _ if NOT_CONNECTED.iter().any(|p| e.details().starts_with(p)) => Self::Unavailable(e),
            // The submit script's refusal (see submit.lua): "QUEUES <max>".
            _ if e.details().starts_with("QUEUES ") => Self::TooManyQueues {
                max: e.details()["QUEUES ".len()..]
                    .trim()
                    .parse()
                    .unwrap_or_default(),
            },
            _ => Self::Redis(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fred::error::{Error, ErrorKind};

    #[test]
    fn conditions_of_redis_are_transient_and_mistakes_are_not() {
        for details in [
            "OOM command not allowed when used memory > 'maxmemory'.",
            "READONLY You can't write against a read only replica.",
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
            "LOADING Redis is loading the dataset in memory",
            "BUSY Redis is busy running a script.",
            // fred, while it reconnects (seen when a Redis restart met a pending completion).
            "Failed to route command.",
            "Too many failed write attempts.",
        ] {
            let e = StoreError::from(Error::new(ErrorKind::Unknown, details));
            assert!(e.is_unavailable(), "{details}");
        }
        let e = StoreError::from(Error::new(
            ErrorKind::Unknown,
            "ERR user_script:1: Script attempted to access a non local key",
        ));
        assert!(!e.is_unavailable());
    }
}
