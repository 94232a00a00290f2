//! REDLINE's data tasks, with the original's names, keyword arguments and result shapes. Paths are relative to
//! the worker's data directory; the rules of every value are in [`crate::values`]. The handlers are the data
//! library's task functions (`redline_convert::tasks`), which take these argument types and return these results.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::spec::TaskType;
use crate::values::{
    AnalysisType, Bounded, Columns, Compression, Day, Format, HandleMissing, RelativePath,
    SourceName, Ticker,
};

/// Rows per record batch unless `batch_size` says otherwise.
pub const DEFAULT_BATCH_SIZE: u64 = 128 * 1024;
/// Largest `batch_size` accepted: a batch is held in memory whole.
pub const MAX_BATCH_SIZE: u64 = 1 << 20;
/// Default (and largest) cap on distinct (ticker, timestamp) keys kept for `remove_duplicates` (about 70 MB).
pub const MAX_DEDUP_KEYS: u64 = 3_500_000;
/// Default (and largest) cap on rows held back by `backward_fill`.
pub const MAX_PENDING_ROWS: u64 = 1_000_000;

/// Rows per batch.
pub type BatchSize = Bounded<1, MAX_BATCH_SIZE>;
/// A cap on distinct keys; a submitter may lower the memory bound, not raise it.
pub type DedupKeys = Bounded<1, MAX_DEDUP_KEYS>;
/// A cap on rows held back; a submitter may lower the memory bound, not raise it.
pub type PendingRows = Bounded<1, MAX_PENDING_ROWS>;

/// The `options` object of every data task. Keys this version does not know are ignored, as the original's
/// were (its UI sends some).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DataOptions {
    /// Replace an existing output instead of failing.
    pub overwrite: Option<bool>,
    /// Drop rows whose (ticker, timestamp) was seen before.
    pub remove_duplicates: Option<bool>,
    /// Missing values: keep (`none`), `drop` the row, `forward_fill` or `backward_fill`.
    pub handle_missing: Option<HandleMissing>,
    /// Output columns and their order (canonical names).
    pub columns: Option<Columns>,
    /// The original converter's name for `columns` (used when `columns` is absent).
    pub column_order: Option<Columns>,
    /// Parquet compression.
    pub compression: Option<Compression>,
    /// Rows per record batch.
    pub batch_size: Option<BatchSize>,
    /// Cap on distinct keys kept for `remove_duplicates`.
    pub max_dedup_keys: Option<DedupKeys>,
    /// Cap on rows held back by `backward_fill`.
    pub max_pending_rows: Option<PendingRows>,
}

/// `"success"`, the status of every data task's result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Success {
    /// The task did its work.
    #[default]
    Success,
}

// === process_data_conversion ===

/// `process_data_conversion`.
#[derive(Debug)]
pub struct Conversion;

/// Arguments of `process_data_conversion`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConversionArgs {
    /// Input file, relative to the data directory (also looked up under `downloaded/`).
    pub input_file: RelativePath,
    /// Output format.
    pub output_format: Format,
    /// Output file, relative to the data directory.
    pub output_file: RelativePath,
    /// Conversion options.
    pub options: Option<DataOptions>,
}

/// Result of `process_data_conversion`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConversionResult {
    /// `success`.
    pub status: Success,
    /// The input, as given.
    pub input_file: String,
    /// The output, as given.
    pub output_file: String,
    /// The output's format.
    pub output_format: Format,
    /// Rows written.
    pub rows_converted: u64,
    /// Columns written.
    pub columns: Vec<String>,
    /// When it finished: ISO 8601, naive UTC, as the original.
    pub completed_at: String,
}

impl TaskType for Conversion {
    const NAME: &'static str = "process_data_conversion";
    const DESCRIPTION: &'static str =
        "Converts a market-data file between csv, txt, json, parquet and Arrow IPC, streaming.";
    const CELERY_ALIAS: bool = true;
    type Args = ConversionArgs;
    type Output = ConversionResult;
}

// === process_data_analysis ===

/// `process_data_analysis`.
#[derive(Debug)]
pub struct Analysis;

/// Arguments of `process_data_analysis`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalysisArgs {
    /// Data file, relative to the data directory (also looked up under `downloaded/`).
    pub data_file: RelativePath,
    /// Kind of analysis.
    pub analysis_type: AnalysisType,
    /// Reading options (`batch_size`, `columns`...).
    pub options: Option<DataOptions>,
}

/// Rows and columns of the analysed data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DataShape {
    /// Rows read.
    pub rows: u64,
    /// Columns present.
    pub columns: u64,
}

/// Result of `process_data_analysis`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AnalysisResult {
    /// `success`.
    pub status: Success,
    /// The file, as given.
    pub data_file: String,
    /// The kind of analysis.
    pub analysis_type: AnalysisType,
    /// The statistics (per column for `basic`/`statistical`, close and volume for `financial`, a matrix for
    /// `correlation`).
    pub result: Value,
    /// Rows and columns read.
    pub data_shape: DataShape,
    /// Columns present.
    pub columns: Vec<String>,
    /// When it finished: ISO 8601, naive UTC.
    pub completed_at: String,
}

impl TaskType for Analysis {
    const NAME: &'static str = "process_data_analysis";
    const DESCRIPTION: &'static str = "Statistics of a data file in one streaming pass.";
    const CELERY_ALIAS: bool = true;
    type Args = AnalysisArgs;
    type Output = AnalysisResult;
}

// === process_file_upload ===

/// `process_file_upload`.
#[derive(Debug)]
pub struct Upload;

/// Arguments of `process_file_upload`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadArgs {
    /// Uploaded file, relative to the data directory.
    pub file_path: RelativePath,
    /// Format to convert to (same name, new extension); absent to only count rows and columns.
    pub target_format: Option<Format>,
    /// Conversion options.
    pub options: Option<DataOptions>,
}

/// Result of `process_file_upload`: converted, or counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum UploadResult {
    /// With a target format.
    Converted {
        /// `success`.
        status: Success,
        /// The upload, as given.
        original_file: String,
        /// The converted file.
        converted_file: String,
        /// Its format.
        target_format: Format,
        /// Rows written.
        rows: u64,
        /// Columns written.
        columns: Vec<String>,
        /// When it finished.
        completed_at: String,
    },
    /// Without one.
    Counted {
        /// `success`.
        status: Success,
        /// The upload, as given.
        file_path: String,
        /// Rows read.
        rows: u64,
        /// Columns present.
        columns: Vec<String>,
        /// When it finished.
        completed_at: String,
    },
}

impl TaskType for Upload {
    const NAME: &'static str = "process_file_upload";
    const DESCRIPTION: &'static str =
        "Reads an uploaded file and optionally converts it to another format.";
    const CELERY_ALIAS: bool = true;
    type Args = UploadArgs;
    type Output = UploadResult;
}

// === process_data_download ===

/// `process_data_download`.
#[derive(Debug)]
pub struct Download;

/// The source a download uses unless told otherwise.
pub const DEFAULT_SOURCE: &str = "stooq";

/// Arguments of `process_data_download`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DownloadArgs {
    /// Ticker symbol.
    pub ticker: Ticker,
    /// First day.
    pub start_date: Day,
    /// Last day, not before `start_date` (checked when the task runs).
    pub end_date: Day,
    /// Download source, one the worker is configured with (default `stooq`).
    pub source: Option<SourceName>,
    /// Options (`overwrite`).
    pub options: Option<DataOptions>,
}

impl DownloadArgs {
    /// The source, or the default one.
    pub fn source(&self) -> &str {
        self.source
            .as_ref()
            .map_or(DEFAULT_SOURCE, SourceName::as_str)
    }
}

/// The dates of a download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DateRange {
    /// First day.
    pub start: String,
    /// Last day.
    pub end: String,
}

/// Result of `process_data_download`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DownloadResult {
    /// `success`.
    pub status: Success,
    /// The ticker.
    pub ticker: String,
    /// The source.
    pub source: String,
    /// File name under `downloaded/`.
    pub filename: String,
    /// Path relative to the data directory.
    pub filepath: String,
    /// Rows written.
    pub records: u64,
    /// Columns written.
    pub columns: Vec<String>,
    /// The dates asked for.
    pub date_range: DateRange,
    /// When it finished.
    pub completed_at: String,
}

impl TaskType for Download {
    const NAME: &'static str = "process_data_download";
    const DESCRIPTION: &'static str =
        "Downloads daily OHLCV data for a ticker into downloaded/ as canonical CSV.";
    const CELERY_ALIAS: bool = true;
    type Args = DownloadArgs;
    type Output = DownloadResult;
}

// === process_bulk_operations ===

/// `process_bulk_operations`.
#[derive(Debug)]
pub struct Bulk;

/// Most operations in one bulk task.
pub const MAX_BULK_OPERATIONS: usize = 100;

/// One operation of a bulk task: `{"type": "convert" | "download" | "analyze", "data": {...}}`, `data` being
/// the same keyword arguments as the task of that kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    tag = "type",
    content = "data",
    rename_all = "lowercase",
    deny_unknown_fields
)]
pub enum BulkOperation {
    /// A conversion.
    Convert(ConversionArgs),
    /// A download.
    Download(DownloadArgs),
    /// An analysis.
    Analyze(AnalysisArgs),
}

impl BulkOperation {
    /// `convert`, `download` or `analyze`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Convert(_) => "convert",
            Self::Download(_) => "download",
            Self::Analyze(_) => "analyze",
        }
    }
}

/// Arguments of `process_bulk_operations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkArgs {
    /// The operations, run in order; one failing does not stop the others.
    #[schemars(length(min = 1, max = MAX_BULK_OPERATIONS))]
    #[serde(deserialize_with = "operations")]
    pub operations: Vec<BulkOperation>,
    /// Options passed to every operation.
    pub options: Option<DataOptions>,
}

fn operations<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<BulkOperation>, D::Error> {
    let ops = Vec::<BulkOperation>::deserialize(d)?;
    if ops.is_empty() || ops.len() > MAX_BULK_OPERATIONS {
        return Err(serde::de::Error::custom(format!(
            "must be a non-empty list of at most {MAX_BULK_OPERATIONS} operations"
        )));
    }
    Ok(ops)
}

/// What happened to one bulk operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BulkOutcome {
    /// 1-based position in `operations`.
    pub operation: usize,
    /// `convert`, `download` or `analyze`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `success` or `error`.
    pub status: String,
    /// The operation's result, when it succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Why it failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Result of `process_bulk_operations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BulkResult {
    /// `success` (each operation has its own status).
    pub status: Success,
    /// Operations given.
    pub total_operations: usize,
    /// Operations that succeeded.
    pub successful: usize,
    /// Operations that failed.
    pub failed: usize,
    /// Each operation's outcome, in order.
    pub results: Vec<BulkOutcome>,
    /// When it finished.
    pub completed_at: String,
}

impl TaskType for Bulk {
    const NAME: &'static str = "process_bulk_operations";
    const DESCRIPTION: &'static str = "Runs convert, download and analyze operations in order; one failure does not stop the others.";
    const CELERY_ALIAS: bool = true;
    type Args = BulkArgs;
    type Output = BulkResult;
}
