//! Errors of the data library, classified by what the caller should do next.

use std::io;
use std::path::PathBuf;

pub use redline_catalog::values::PathError;

/// The error of every data operation.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An I/O failure on a file that exists (disk full, interrupted read...).
    #[error("I/O error on '{path}': {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An input file does not exist.
    #[error("file not found: '{0}'")]
    NotFound(String),
    /// A path was refused before any file was touched.
    #[error(transparent)]
    Path(#[from] PathError),
    /// The output exists and `overwrite` was not set.
    #[error("output '{0}' already exists; set overwrite to replace it")]
    AlreadyExists(String),
    /// The format name or file extension is not one this library reads or writes.
    #[error("unsupported format '{format}': {reason}")]
    UnsupportedFormat {
        /// The format name or extension as given.
        format: String,
        /// Why it is not supported.
        reason: String,
    },
    /// A request argument or option is invalid.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The data in a file is malformed: bad rows, wrong types, truncation, wrong format.
    #[error("malformed data in '{file}'{}{}: {message}", row.map(|r| format!(", row {r}")).unwrap_or_default(), column.as_ref().map(|c| format!(", column '{c}'")).unwrap_or_default())]
    Malformed {
        /// The file (relative name as given by the caller).
        file: String,
        /// The 1-based data row (header excluded), when known.
        row: Option<u64>,
        /// The column, when known.
        column: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// An option needing memory proportional to the data went past its documented cap.
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// The upstream data source failed in a way that may pass (5xx, timeout, connection reset).
    #[error("upstream unavailable: {0}")]
    UpstreamUnavailable(String),
    /// The upstream data source refused the request (4xx) or sent data we cannot use.
    #[error("upstream rejected the request: {0}")]
    UpstreamRejected(String),
    /// The caller cancelled the operation.
    #[error("cancelled")]
    Cancelled,
    /// A failure inside the columnar libraries that is not the data's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

// === impl DataError ===

impl From<redline_catalog::values::FormatError> for DataError {
    fn from(e: redline_catalog::values::FormatError) -> Self {
        DataError::UnsupportedFormat {
            format: e.format,
            reason: e.reason,
        }
    }
}

impl DataError {
    /// Whether running the same operation again may succeed: I/O hiccups and upstream 5xx or timeouts.
    /// Bad input, malformed data, path escapes, unknown formats and existing outputs are permanent.
    pub fn retryable(&self) -> bool {
        match self {
            DataError::Io { source, .. } => !matches!(
                source.kind(),
                io::ErrorKind::NotFound
                    | io::ErrorKind::PermissionDenied
                    | io::ErrorKind::InvalidInput
                    | io::ErrorKind::InvalidData
            ),
            DataError::UpstreamUnavailable(_) => true,
            DataError::NotFound(_)
            | DataError::Path(_)
            | DataError::AlreadyExists(_)
            | DataError::UnsupportedFormat { .. }
            | DataError::InvalidInput(_)
            | DataError::Malformed { .. }
            | DataError::LimitExceeded(_)
            | DataError::UpstreamRejected(_)
            | DataError::Cancelled
            | DataError::Internal(_) => false,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn malformed(file: &str, message: impl Into<String>) -> Self {
        DataError::Malformed {
            file: file.to_owned(),
            row: None,
            column: None,
            message: message.into(),
        }
    }

    pub(crate) fn malformed_at(
        file: &str,
        row: u64,
        column: &str,
        message: impl Into<String>,
    ) -> Self {
        DataError::Malformed {
            file: file.to_owned(),
            row: Some(row),
            column: Some(column.to_owned()),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_matches_what_a_retry_can_fix() {
        let io = DataError::io("x", io::Error::new(io::ErrorKind::Interrupted, "x"));
        assert!(io.retryable());
        assert!(DataError::UpstreamUnavailable("503".into()).retryable());
        assert!(!DataError::UpstreamRejected("404".into()).retryable());
        assert!(!DataError::malformed("f.csv", "bad").retryable());
        assert!(!DataError::Path(PathError::Absolute("/etc".into())).retryable());
        assert!(
            !DataError::UnsupportedFormat {
                format: "x".into(),
                reason: "y".into()
            }
            .retryable()
        );
    }

    #[test]
    fn malformed_message_names_file_row_and_column() {
        let e = DataError::malformed_at("a.csv", 7, "close", "'abc' is not a number");
        assert_eq!(
            e.to_string(),
            "malformed data in 'a.csv', row 7, column 'close': 'abc' is not a number"
        );
    }
}
