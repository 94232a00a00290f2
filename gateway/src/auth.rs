//! Optional API-key authentication of the /tasks routes.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::error::ApiError;

/// The key a request presents: `X-API-Key`, or `Authorization: Bearer <key>`.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(k) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(k.trim()).filter(|k| !k.is_empty());
    }
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

/// True when `presented` equals one of `keys`. Every key is compared, each in constant time, so the answer's
/// timing does not reveal which key or how many leading bytes matched.
pub fn key_matches(keys: &[String], presented: &str) -> bool {
    keys.iter()
        .fold(subtle::Choice::from(0), |acc, k| {
            acc | k.as_bytes().ct_eq(presented.as_bytes())
        })
        .into()
}

/// Middleware: 401 JSON unless keys are not configured, the route is a health endpoint, or a valid key is sent.
pub async fn middleware(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if state.config.api_keys.is_empty() || request.uri().path() == "/tasks/health" {
        return next.run(request).await;
    }
    match presented_key(request.headers()) {
        Some(k) if key_matches(&state.config.api_keys, k) => next.run(request).await,
        Some(_) => unauthorized("Invalid API key"),
        None => unauthorized("API key required"),
    }
}

fn unauthorized(text: &str) -> Response {
    let mut r =
        ApiError::new(StatusCode::UNAUTHORIZED, tonic::Code::Unauthenticated, text).into_response();
    r.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_exact_keys() {
        let keys = vec!["alpha".to_owned(), "beta".to_owned()];
        assert!(key_matches(&keys, "beta"));
        assert!(!key_matches(&keys, "bet"));
        assert!(!key_matches(&keys, "betaa"));
        assert!(!key_matches(&[], "beta"));
    }
}
