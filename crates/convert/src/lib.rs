//! Streaming market-data conversion and analysis for redline.
//!
//! This crate is the data library behind the worker's conversion, analysis, upload, bulk and
//! download tasks, and the `redline convert` command. It converts between csv, txt (Stooq and
//! tab/comma text), JSON (array of records and NDJSON), Parquet and Arrow IPC (feather, arrow),
//! streaming record batches end to end so memory stays bounded whatever the file size.
//!
//! # Layout
//! - [`error`]: [`DataError`] (with [`DataError::retryable`]) and [`PathError`].
//! - [`paths`]: the [`DataRoot`] sandbox and atomic output files.
//! - [`format`]: the catalogue's [`Format`] and [`Compression`]; DuckDB is refused with a reason.
//! - [`schema`]: the canonical schema, column mapping and timestamp parsing.
//! - [`read`] / [`write`]: one streaming reader and writer per format.
//! - [`options`]: conversion options and the transforms that apply them, with memory caps.
//! - [`convert`]: file-to-file conversion with reading and writing on two threads.
//! - [`analysis`]: one-pass statistics.
//! - [`download`]: daily OHLCV over HTTP from a Stooq-style CSV endpoint.
//! - [`tasks`]: the task functions the worker wraps, with progress and cancellation.

pub mod analysis;
pub mod convert;
pub mod download;
pub mod error;
pub mod format;
pub mod options;
pub mod paths;
pub mod read;
pub mod schema;
pub mod tasks;
pub mod write;

pub use error::{DataError, PathError};
pub use format::{Compression, Format, HandleMissing};
pub use options::ConvertOptions;
pub use paths::DataRoot;
pub use paths::validate_relative_path;
pub use tasks::{
    DataContext, Progress, process_bulk_operations, process_data_analysis, process_data_conversion,
    process_data_download, process_file_upload,
};
