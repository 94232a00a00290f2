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

/// The accepted API keys. Secrets: `{:?}` shows how many there are, never one of them.
#[derive(Clone, Default)]
pub struct ApiKeys(Vec<String>);

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.0.len())
    }
}

impl ApiKeys {
    /// Keys as configured.
    pub fn new(keys: Vec<String>) -> Self {
        Self(keys)
    }

    /// How many keys are accepted.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when no key is configured (no authentication).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when `presented` equals one of the keys. Every key is compared, each in constant time, so the
    /// answer's timing does not reveal which key or how many leading bytes matched.
    pub fn matches(&self, presented: &str) -> bool {
        self.0
            .iter()
            .fold(subtle::Choice::from(0), |acc, k| {
                acc | k.as_bytes().ct_eq(presented.as_bytes())
            })
            .into()
    }
}

/// Middleware: 401 JSON unless keys are not configured, the route is a health endpoint, or a valid key is sent.
pub async fn middleware(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if state.config.api_keys.is_empty() || request.uri().path() == "/tasks/health" {
        return next.run(request).await;
    }
    match presented_key(request.headers()) {
        Some(k) if state.config.api_keys.matches(k) => next.run(request).await,
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
        let keys = ApiKeys::new(vec!["alpha".to_owned(), "beta".to_owned()]);
        assert!(keys.matches("beta"));
        assert!(!keys.matches("bet"));
        assert!(!keys.matches("betaa"));
        assert!(!ApiKeys::default().matches("beta"));
        assert_eq!(format!("{keys:?}"), "ApiKeys(2 keys)");
    }
}
