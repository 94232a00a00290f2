//! Errors of the task store, classified by what the caller should do.

/// What went wrong talking to the queue.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis is unreachable or timed out: retry later. Nothing was changed, or the change is unknown.
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
}

impl StoreError {
    /// True when the failure is about reaching Redis, not about the request.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

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
            _ if e.details().starts_with("LOADING") || e.details().starts_with("BUSY") => {
                Self::Unavailable(e)
            }
            _ => Self::Redis(e),
        }
    }
}
