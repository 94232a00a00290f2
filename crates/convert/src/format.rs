//! File formats, chosen by name (`output_format`) or by file extension.

use std::path::Path;

use crate::error::DataError;

/// Why `.duckdb` is refused: the only maintained Rust binding compiles the whole DuckDB C++ engine.
const DUCKDB_REASON: &str = "DuckDB files are not supported by this build: the maintained Rust \
binding bundles and compiles the DuckDB C++ engine, which is too heavy for the worker image; \
convert to parquet, which DuckDB reads natively";

/// Parquet compression codecs offered to users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Snappy: fast, the default (as pandas and pyarrow).
    #[default]
    Snappy,
    /// Zstandard (level 3): smaller files, slower writes.
    Zstd,
    /// No compression.
    None,
}

impl Compression {
    /// Parses `snappy`, `zstd` or `none`.
    pub fn parse(s: &str) -> Result<Self, DataError> {
        match s.to_ascii_lowercase().as_str() {
            "snappy" => Ok(Self::Snappy),
            "zstd" => Ok(Self::Zstd),
            "none" | "uncompressed" => Ok(Self::None),
            other => Err(DataError::InvalidInput(format!(
                "unknown compression '{other}' (expected snappy, zstd or none)"
            ))),
        }
    }
}

/// A data file format this library reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated values with a header row.
    Csv,
    /// Text: reads Stooq `<TICKER>,...` files and tab- or comma-separated text; writes tab-separated.
    Txt,
    /// A JSON array of records (`[{"ticker":...}, ...]`), as the original wrote.
    Json,
    /// Newline-delimited JSON, one record per line.
    Ndjson,
    /// Apache Parquet.
    Parquet,
    /// Feather v2, which is the Arrow IPC file format (`.feather`).
    Feather,
    /// Arrow IPC file format (`.arrow`).
    Arrow,
}

impl Format {
    /// All formats, for listing and round-trip tests.
    pub const ALL: [Format; 7] = [
        Format::Csv,
        Format::Txt,
        Format::Json,
        Format::Ndjson,
        Format::Parquet,
        Format::Feather,
        Format::Arrow,
    ];

    /// Parses a format name (`csv`, `txt`, `json`, `ndjson`/`jsonl`, `parquet`, `feather`,
    /// `arrow`/`ipc`/`pyarrow`), case-insensitive, with or without a leading dot.
    pub fn from_name(name: &str) -> Result<Self, DataError> {
        let n = name.trim().trim_start_matches('.').to_ascii_lowercase();
        match n.as_str() {
            "csv" => Ok(Self::Csv),
            "txt" | "text" => Ok(Self::Txt),
            "json" => Ok(Self::Json),
            "ndjson" | "jsonl" => Ok(Self::Ndjson),
            "parquet" | "polars" => Ok(Self::Parquet),
            "feather" => Ok(Self::Feather),
            "arrow" | "ipc" | "pyarrow" => Ok(Self::Arrow),
            "duckdb" => Err(DataError::UnsupportedFormat {
                format: name.to_owned(),
                reason: DUCKDB_REASON.to_owned(),
            }),
            _ => Err(DataError::UnsupportedFormat {
                format: name.to_owned(),
                reason: "expected one of csv, txt, json, ndjson, parquet, feather, arrow"
                    .to_owned(),
            }),
        }
    }

    /// The format a file's extension names.
    pub fn from_path(path: &Path) -> Result<Self, DataError> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_default();
        if ext.is_empty() {
            return Err(DataError::UnsupportedFormat {
                format: path.display().to_string(),
                reason: "the file has no extension; give the format explicitly".to_owned(),
            });
        }
        Self::from_name(&ext)
    }

    /// The canonical extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Txt => "txt",
            Self::Json => "json",
            Self::Ndjson => "ndjson",
            Self::Parquet => "parquet",
            Self::Feather => "feather",
            Self::Arrow => "arrow",
        }
    }

    /// The canonical name, as reported in results.
    pub fn name(self) -> &'static str {
        self.extension()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_extensions_resolve() {
        assert_eq!(Format::from_name("CSV").ok(), Some(Format::Csv));
        assert_eq!(Format::from_name(".parquet").ok(), Some(Format::Parquet));
        assert_eq!(
            Format::from_path(Path::new("a/b.feather")).ok(),
            Some(Format::Feather)
        );
        assert_eq!(Format::from_name("jsonl").ok(), Some(Format::Ndjson));
        for f in Format::ALL {
            assert_eq!(Format::from_name(f.extension()).ok(), Some(f));
        }
    }

    #[test]
    fn duckdb_and_unknown_formats_are_refused_with_a_reason() {
        let e = Format::from_path(Path::new("x.duckdb")).err();
        assert!(
            matches!(e, Some(DataError::UnsupportedFormat { ref reason, .. }) if reason.contains("DuckDB"))
        );
        assert!(Format::from_name("xlsx").is_err());
        assert!(Format::from_path(Path::new("noext")).is_err());
    }
}
