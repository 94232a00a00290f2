//! JSON errors: the original's `{"error": ...}` beside grpc-gateway v2's `code`, `message`, `details`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt;

/// The HTTP status of a gRPC code: grpc-gateway v2's table (`runtime/errors.go`), kept exhaustive so a new
/// code cannot silently fall through to 500.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        // 499 "Client Closed Request", as nginx and grpc-gateway.
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        // FAILED_PRECONDITION is 400, deliberately not 412: grpc-gateway v2 changed it.
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// An error answered to the client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: Code,
    error: String,
    details: Vec<Value>,
    extra: Vec<(&'static str, Value)>,
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    /// An error with an explicit HTTP status and gRPC code.
    pub fn new(status: StatusCode, code: Code, error: impl Into<String>) -> Self {
        Self {
            status,
            code,
            error: error.into(),
            details: Vec::new(),
            extra: Vec::new(),
            headers: Vec::new(),
        }
    }

    /// 400 for a request the gateway itself rejects.
    pub fn bad_request(error: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Code::InvalidArgument, error)
    }

    /// 404 `Task not found`.
    pub fn task_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, Code::NotFound, "Task not found")
    }

    /// 503 when a backend cannot be reached.
    pub fn unavailable(error: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable, error)
    }

    /// Adds a top-level field to the body.
    pub fn with_field(mut self, name: &'static str, value: Value) -> Self {
        self.extra.push((name, value));
        self
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<tonic::Status> for ApiError {
    /// Maps a TaskService status. `Task not found` keeps the original's text; errors produced by the client
    /// side of the call (no connection, the gateway's own deadline) are 503, since the backend, not the
    /// client, failed.
    fn from(status: tonic::Status) -> Self {
        // CANCELLED is what tonic reports when the call's own deadline (`--grpc-timeout`) expires: the
        // gateway cancels nothing else, and a client that hangs up drops the call instead.
        if status.code() == Code::Cancelled {
            return Self::unavailable("Task service did not answer in time");
        }
        if status.code() == Code::Unavailable {
            return Self::unavailable(format!(
                "Background task processing not available: {}",
                status.message()
            ));
        }
        let error = if status.code() == Code::NotFound {
            "Task not found".to_owned()
        } else {
            status.message().to_owned()
        };
        let mut err = Self::new(http_status(status.code()), status.code(), error);
        if let Some(bad) = status.get_details_bad_request() {
            let violations: Vec<Value> = bad
                .field_violations
                .iter()
                .map(|v| json!({"field": v.field, "description": v.description}))
                .collect();
            err.details.push(json!({
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": violations,
            }));
        }
        err
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::Map::new();
        body.insert("error".into(), Value::String(self.error.clone()));
        body.insert("code".into(), json!(self.code as i32));
        body.insert("message".into(), Value::String(self.error));
        body.insert("details".into(), Value::Array(self.details));
        for (k, v) in self.extra {
            body.insert(k.into(), v);
        }
        let mut resp = (self.status, axum::Json(Value::Object(body))).into_response();
        for (k, v) in self.headers {
            resp.headers_mut().insert(k, v);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_grpc_gateway() {
        let expected = [
            (Code::Ok, 200),
            (Code::Cancelled, 499),
            (Code::Unknown, 500),
            (Code::InvalidArgument, 400),
            (Code::DeadlineExceeded, 504),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 400),
            (Code::Aborted, 409),
            (Code::OutOfRange, 400),
            (Code::Unimplemented, 501),
            (Code::Internal, 500),
            (Code::Unavailable, 503),
            (Code::DataLoss, 500),
            (Code::Unauthenticated, 401),
        ];
        for (code, http) in expected {
            assert_eq!(http_status(code).as_u16(), http, "{code:?}");
        }
    }

    #[test]
    fn local_timeout_is_503() {
        let e = ApiError::from(tonic::Status::cancelled("Timeout expired"));
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
