//! Errors of TaskService and their one mapping to gRPC status codes, with the one place failures are logged.

use std::sync::Arc;

use redline_catalog::FieldViolation;
use redline_taskqueue::StoreError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// What went wrong handling an RPC.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed; every problem is listed with its field.
    #[error("{message}")]
    Invalid {
        /// Summary.
        message: String,
        /// Field-level details.
        violations: Vec<FieldViolation>,
    },
    /// No such task (never submitted, cleaned up, or expired).
    #[error("task {0} not found")]
    NotFound(String),
    /// A watched task's record expired.
    #[error("task {0} expired")]
    Expired(String),
    /// The task is not in a state that allows the operation.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Redis is unreachable or could not take the command now: retry later.
    #[error("task store unavailable")]
    Unavailable(#[source] Arc<StoreError>),
    /// The service is shutting down.
    #[error("shutting down")]
    ShuttingDown,
    /// A bug, or a reply from Redis this version does not understand.
    #[error("task store failed")]
    Internal(#[source] Arc<StoreError>),
    /// The submission batcher is gone (the service is stopping).
    #[error("the submitter stopped")]
    SubmitterStopped,
}

impl ServiceError {
    /// One invalid field.
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        let description = description.into();
        Self::Invalid {
            message: format!("{field}: {description}"),
            violations: vec![FieldViolation::new(field, description)],
        }
    }

    /// Several invalid fields.
    pub fn invalid_many(violations: Vec<FieldViolation>) -> Self {
        let summary: Vec<String> = violations
            .iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .collect();
        Self::Invalid {
            message: summary.join("; "),
            violations,
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        Arc::new(e).into()
    }
}

impl From<Arc<StoreError>> for ServiceError {
    fn from(e: Arc<StoreError>) -> Self {
        match &*e {
            StoreError::Unavailable(_) => Self::Unavailable(e),
            StoreError::Protocol(_) | StoreError::Redis(_) => Self::Internal(e),
            StoreError::BadCursor => Self::invalid("page_token", e.to_string()),
            StoreError::TooManyQueues { .. } => Self::invalid("queue", e.to_string()),
        }
    }
}

/// The status of each error. Exhaustive: a new variant needs its own decision. Private, so that every
/// handler's error leaves through [`fail`].
fn status(e: ServiceError) -> Status {
    {
        match e {
            ServiceError::Invalid {
                message,
                violations,
            } => {
                let details = ErrorDetails::with_bad_request(
                    violations
                        .into_iter()
                        .map(|v| tonic_types::FieldViolation::new(v.field, v.description))
                        .collect::<Vec<_>>(),
                );
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            ServiceError::NotFound(id) => Status::not_found(format!("task {id} not found")),
            ServiceError::Expired(id) => Status::not_found(format!("task {id} expired")),
            ServiceError::FailedPrecondition(m) => Status::failed_precondition(m),
            // UNAVAILABLE tells clients (and the gateway: 503) that retrying later is the right move.
            ServiceError::Unavailable(_) => {
                Status::unavailable("task store unavailable; retry later")
            }
            ServiceError::ShuttingDown | ServiceError::SubmitterStopped => {
                Status::unavailable("server shutting down")
            }
            // Internals stay out of the message; the log has the source chain.
            ServiceError::Internal(_) => Status::internal("internal error"),
        }
    }
}

/// The status of a failed call, logging server-side failures with their source chain; a client's mistakes
/// are answered, not logged. Every handler's error leaves through here.
pub fn fail(e: ServiceError) -> Status {
    match &e {
        ServiceError::Unavailable(_) | ServiceError::Internal(_) => {
            tracing::warn!(error = %redline_runtime::config::error_chain(&e), "request failed");
        }
        ServiceError::Invalid { .. }
        | ServiceError::NotFound(_)
        | ServiceError::Expired(_)
        | ServiceError::FailedPrecondition(_)
        | ServiceError::ShuttingDown
        | ServiceError::SubmitterStopped => {}
    }
    status(e)
}
