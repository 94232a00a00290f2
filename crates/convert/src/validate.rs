//! Pure submit-time checks: the task service calls these before enqueueing, so bad requests are
//! refused at once instead of failing later in a worker. None touches the filesystem.

use crate::analysis::AnalysisType;
use crate::error::DataError;
use crate::format::Format;

pub use crate::paths::validate_relative_path;

/// Checks an output format name (`csv`, `txt`, `json`, `ndjson`, `parquet`, `feather`, `arrow`).
pub fn validate_format(name: &str) -> Result<(), DataError> {
    Format::from_name(name).map(|_| ())
}

/// Checks an analysis type (`basic`, `statistical`, `financial`, `correlation`).
pub fn validate_analysis_type(name: &str) -> Result<(), DataError> {
    AnalysisType::parse(name).map(|_| ())
}

/// Checks a ticker symbol: 1 to 32 of `A-Z a-z 0-9 . _ - ^`, not starting with a dot (it becomes
/// part of a file name).
pub fn validate_ticker(ticker: &str) -> Result<(), DataError> {
    let ok = !ticker.is_empty()
        && ticker.len() <= 32
        && !ticker.starts_with('.')
        && ticker
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '^'));
    if ok {
        Ok(())
    } else {
        Err(DataError::InvalidInput(format!(
            "invalid ticker '{ticker}' (1-32 letters, digits, '.', '_', '-', '^')"
        )))
    }
}

/// Checks a `YYYY-MM-DD` date.
pub fn validate_date(date: &str) -> Result<chrono::NaiveDate, DataError> {
    chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").map_err(|_| {
        DataError::InvalidInput(format!("invalid date '{date}' (expected YYYY-MM-DD)"))
    })
}

/// Checks a download request's ticker and date range.
pub fn validate_download(ticker: &str, start_date: &str, end_date: &str) -> Result<(), DataError> {
    validate_ticker(ticker)?;
    let (s, e) = (validate_date(start_date)?, validate_date(end_date)?);
    if s > e {
        return Err(DataError::InvalidInput(format!(
            "start_date {start_date} is after end_date {end_date}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submit_time_checks() {
        assert!(validate_format("parquet").is_ok());
        assert!(validate_format("duckdb").is_err());
        assert!(validate_analysis_type("financial").is_ok());
        assert!(validate_analysis_type("basic_stats").is_err());
        assert!(validate_ticker("AAPL.US").is_ok());
        assert!(validate_ticker("../etc").is_err());
        assert!(validate_ticker("a/b").is_err());
        assert!(validate_download("AAPL", "2024-01-01", "2024-02-01").is_ok());
        assert!(validate_download("AAPL", "2024-02-01", "2024-01-01").is_err());
        assert!(validate_download("AAPL", "2024-13-01", "2024-12-01").is_err());
    }
}
