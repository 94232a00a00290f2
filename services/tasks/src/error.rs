//! Errors of TaskService and their one mapping to gRPC status codes.

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
    /// The task is not in a state that allows the operation.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Redis is unreachable or timed out.
    #[error("task store unavailable: {0}")]
    Unavailable(String),
    /// The service is shutting down.
    #[error("shutting down")]
    ShuttingDown,
    /// A bug or an unexpected reply from Redis.
    #[error("internal error: {0}")]
    Internal(String),
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
        match e {
            StoreError::Unavailable(_) => Self::Unavailable(e.to_string()),
            StoreError::Protocol(_) | StoreError::Redis(_) => Self::Internal(e.to_string()),
            StoreError::BadCursor => Self::invalid("page_token", e.to_string()),
        }
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        // Every handler's error leaves through here, so this is where server-side failures are logged;
        // a client's mistakes are answered, not logged.
        if let ServiceError::Unavailable(cause) | ServiceError::Internal(cause) = &e {
            tracing::warn!(%cause, "request failed");
        }
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
            ServiceError::FailedPrecondition(m) => Status::failed_precondition(m),
            // UNAVAILABLE tells clients (and the gateway: 503) that retrying later is the right move.
            ServiceError::Unavailable(_) => {
                Status::unavailable("task store unavailable; retry later")
            }
            ServiceError::ShuttingDown => Status::unavailable("server shutting down"),
            // Internals stay out of the message; the log has the source chain.
            ServiceError::Internal(_) => Status::internal("internal error"),
        }
    }
}
