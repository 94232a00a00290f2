//! Daily OHLCV downloads over HTTP from a Stooq-style CSV endpoint.
//!
//! The request is `{base}/q/d/l/?s={ticker}&d1={YYYYMMDD}&d2={YYYYMMDD}&i=d`; the answer is a
//! CSV with `Date,Open,High,Low,Close,Volume` columns. Transport failures, timeouts, 429 and 5xx
//! answers are retried a bounded number of times with exponential backoff; other 4xx answers and
//! bodies that are not such a CSV fail at once with a non-retryable error.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

use crate::error::DataError;

/// Where and how downloads are fetched.
#[derive(Debug, Clone)]
pub struct DownloadConfig {
    /// Base URL per source name (e.g. `stooq` → `https://stooq.com`).
    pub sources: BTreeMap<String, String>,
    /// Timeout of one whole request (connect, send, receive).
    pub timeout: Duration,
    /// Attempts per download, the first included.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubled for each further attempt.
    pub backoff: Duration,
    /// Largest body accepted (daily data for decades is well under a megabyte).
    pub max_body_bytes: u64,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        Self {
            sources: BTreeMap::from([("stooq".to_owned(), "https://stooq.com".to_owned())]),
            timeout: Duration::from_secs(30),
            max_attempts: 3,
            backoff: Duration::from_millis(500),
            max_body_bytes: 64 << 20,
        }
    }
}

impl DownloadConfig {
    /// A configuration with one source at `base_url`.
    pub fn single(source: &str, base_url: &str) -> Self {
        Self {
            sources: BTreeMap::from([(source.to_owned(), base_url.to_owned())]),
            ..Self::default()
        }
    }

    /// The URL for a ticker and date range (dates as `YYYY-MM-DD`).
    pub fn url(
        &self,
        source: &str,
        ticker: &str,
        start: &str,
        end: &str,
    ) -> Result<String, DataError> {
        let base = self.sources.get(source).ok_or_else(|| {
            DataError::InvalidInput(format!(
                "unsupported source '{source}' (configured: {})",
                self.sources.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        Ok(format!(
            "{}/q/d/l/?s={}&d1={}&d2={}&i=d",
            base.trim_end_matches('/'),
            ticker.to_ascii_lowercase(),
            start.replace('-', ""),
            end.replace('-', "")
        ))
    }
}

/// Fetches `url`, retrying transient failures; returns the body. `cancelled` is polled between attempts,
/// through the backoff and between chunks of the body, so a cancelled (or self-fencing) worker gets its
/// thread back within a fraction of a second, or at most one request's connect-and-headers time.
pub fn fetch(
    config: &DownloadConfig,
    url: &str,
    cancelled: &dyn Fn() -> bool,
) -> Result<Vec<u8>, DataError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(config.timeout))
        .timeout_connect(Some(config.timeout.min(Duration::from_secs(5))))
        .http_status_as_error(false)
        .build()
        .into();
    let attempts = config.max_attempts.max(1);
    let mut last = DataError::UpstreamUnavailable("no attempt made".to_owned());
    for attempt in 0..attempts {
        if attempt > 0 {
            let until = std::time::Instant::now()
                + config.backoff.saturating_mul(1 << (attempt - 1).min(16));
            while std::time::Instant::now() < until {
                if cancelled() {
                    return Err(DataError::Cancelled);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if cancelled() {
            return Err(DataError::Cancelled);
        }
        match fetch_once(&agent, url, config.max_body_bytes, cancelled) {
            Ok(body) => return Ok(body),
            Err(e) if e.retryable() => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

fn fetch_once(
    agent: &ureq::Agent,
    url: &str,
    limit: u64,
    cancelled: &dyn Fn() -> bool,
) -> Result<Vec<u8>, DataError> {
    let mut resp = agent
        .get(url)
        .call()
        .map_err(|e| DataError::UpstreamUnavailable(format!("request failed: {e}")))?;
    let status = resp.status().as_u16();
    if status == 429 || status >= 500 {
        return Err(DataError::UpstreamUnavailable(format!(
            "data source answered HTTP {status}"
        )));
    }
    if status >= 400 {
        return Err(DataError::UpstreamRejected(format!(
            "data source answered HTTP {status}"
        )));
    }
    let mut body = Vec::new();
    let mut reader = resp.body_mut().as_reader().take(limit + 1);
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        if cancelled() {
            return Err(DataError::Cancelled);
        }
        let n = reader.read(&mut chunk).map_err(|e| {
            DataError::UpstreamUnavailable(format!("reading the answer failed: {e}"))
        })?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    if body.len() as u64 > limit {
        return Err(DataError::UpstreamRejected(format!(
            "answer larger than {limit} bytes"
        )));
    }
    Ok(body)
}

/// Checks that a body looks like the expected CSV before it is parsed, so a "No data" page or
/// an HTML error page gives a clear message.
pub fn check_body(body: &[u8], ticker: &str) -> Result<(), DataError> {
    let text = String::from_utf8_lossy(&body[..body.len().min(4096)]);
    let first = text.lines().next().unwrap_or("").trim();
    if first.is_empty() {
        return Err(DataError::UpstreamRejected(format!(
            "empty answer for {ticker}"
        )));
    }
    let lower = first.to_ascii_lowercase();
    if !(lower.contains("date") && lower.contains("close")) {
        let shown: String = first.chars().take(80).collect();
        return Err(DataError::UpstreamRejected(format!(
            "no CSV data for {ticker}: the source answered '{shown}'"
        )));
    }
    Ok(())
}
