//! Conversion options and the streaming transforms that apply them.
//!
//! | option | memory |
//! |---|---|
//! | `columns` (selection and order) | streaming, none |
//! | `handle_missing: "drop"` | streaming, none |
//! | `handle_missing: "forward_fill"` | streaming, one carried value per column |
//! | `handle_missing: "backward_fill"` | holds rows back until a later value fills them; at most `max_pending_rows` (default 1,000,000) rows, else [`DataError::LimitExceeded`] |
//! | `remove_duplicates` | a hash set of (ticker, timestamp) keys over the whole file, at most `max_dedup_keys` (default 3,500,000, about 70 MB) distinct keys, else [`DataError::LimitExceeded`] |

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, UInt32Array};
use arrow::compute::{concat, concat_batches, filter_record_batch, take};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use redline_catalog::data::{DataOptions, MAX_DEDUP_KEYS, MAX_PENDING_ROWS};

use crate::error::DataError;
use crate::format::{Compression, HandleMissing};
use crate::read::DEFAULT_BATCH_SIZE;
use crate::schema::{CANONICAL_COLUMNS, canonical_schema, timestamp_array};

/// Default cap on distinct (ticker, timestamp) keys kept for `remove_duplicates`.
pub const DEFAULT_MAX_DEDUP_KEYS: usize = MAX_DEDUP_KEYS as usize;
/// Default cap on rows held back by `backward_fill`.
pub const DEFAULT_MAX_PENDING_ROWS: usize = MAX_PENDING_ROWS as usize;

/// Options of a conversion: a task's [`DataOptions`], or the `redline convert` flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertOptions {
    /// Replace an existing output.
    pub overwrite: bool,
    /// Drop rows whose (ticker, timestamp) was seen before.
    pub remove_duplicates: bool,
    /// Missing-value handling.
    pub handle_missing: HandleMissing,
    /// Output columns, in order (canonical names); all canonical columns when `None`.
    pub columns: Option<Vec<String>>,
    /// Parquet compression.
    pub compression: Compression,
    /// Rows per batch.
    pub batch_size: usize,
    /// Cap for `remove_duplicates`.
    pub max_dedup_keys: usize,
    /// Cap for `backward_fill`.
    pub max_pending_rows: usize,
    /// Who writes the output (a task id). An output the same owner wrote before may be replaced even
    /// without `overwrite`: a task delivered again after its worker died must not fail on its own output.
    pub owner: Option<String>,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        Self {
            overwrite: false,
            remove_duplicates: false,
            handle_missing: HandleMissing::None,
            columns: None,
            compression: Compression::Snappy,
            batch_size: DEFAULT_BATCH_SIZE,
            max_dedup_keys: DEFAULT_MAX_DEDUP_KEYS,
            max_pending_rows: DEFAULT_MAX_PENDING_ROWS,
            owner: None,
        }
    }
}

impl ConvertOptions {
    /// The options of a task (`None`: the defaults). `column_order` is the original converter's name for
    /// `columns`.
    pub fn from_task(options: Option<&DataOptions>) -> Self {
        let mut o = Self::default();
        let Some(t) = options else {
            return o;
        };
        o.overwrite = t.overwrite.unwrap_or(false);
        o.remove_duplicates = t.remove_duplicates.unwrap_or(false);
        o.handle_missing = t.handle_missing.unwrap_or_default();
        o.columns = t
            .columns
            .as_ref()
            .or(t.column_order.as_ref())
            .map(|c| c.get().iter().map(|c| c.name().to_owned()).collect());
        o.compression = t.compression.unwrap_or_default();
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        if let Some(n) = t.batch_size {
            o.batch_size = size(n.get());
        }
        if let Some(n) = t.max_dedup_keys {
            o.max_dedup_keys = size(n.get());
        }
        if let Some(n) = t.max_pending_rows {
            o.max_pending_rows = size(n.get());
        }
        o
    }

    /// Indices into the canonical schema of the output columns, in output order.
    pub fn output_columns(&self) -> Result<Vec<usize>, DataError> {
        let Some(cols) = &self.columns else {
            return Ok((0..CANONICAL_COLUMNS.len()).collect());
        };
        if cols.is_empty() {
            return Err(DataError::InvalidInput(
                "columns must not be empty".to_owned(),
            ));
        }
        let mut out = Vec::with_capacity(cols.len());
        for c in cols {
            let i = CANONICAL_COLUMNS
                .iter()
                .position(|k| k.eq_ignore_ascii_case(c))
                .ok_or_else(|| {
                    DataError::InvalidInput(format!(
                        "unknown column '{c}' (expected one of {})",
                        CANONICAL_COLUMNS.join(", ")
                    ))
                })?;
            if out.contains(&i) {
                return Err(DataError::InvalidInput(format!(
                    "column '{c}' is listed twice"
                )));
            }
            out.push(i);
        }
        Ok(out)
    }

    /// The output schema.
    pub fn output_schema(&self) -> Result<SchemaRef, DataError> {
        let full = canonical_schema();
        let idx = self.output_columns()?;
        Ok(Arc::new(Schema::new(
            idx.iter()
                .map(|&i| full.field(i).clone())
                .collect::<Vec<_>>(),
        )))
    }
}

/// Applies dedup, missing-value handling and column selection to canonical batches, in that order.
pub struct Pipeline {
    options: ConvertOptions,
    present: Vec<usize>,
    select: Vec<usize>,
    schema: SchemaRef,
    tickers: HashMap<String, u32>,
    seen: HashSet<(u32, i64)>,
    carry: Vec<Option<ArrayRef>>,
    pending: Vec<RecordBatch>,
    pending_rows: usize,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("select", &self.select)
            .field("pending_rows", &self.pending_rows)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// A pipeline for an input carrying the canonical columns named in `present`.
    pub fn new(options: &ConvertOptions, present: &[&str]) -> Result<Self, DataError> {
        let present = present
            .iter()
            .filter_map(|p| CANONICAL_COLUMNS.iter().position(|c| c == p))
            .collect();
        Ok(Self {
            select: options.output_columns()?,
            schema: options.output_schema()?,
            options: options.clone(),
            present,
            tickers: HashMap::new(),
            seen: HashSet::new(),
            carry: vec![None; CANONICAL_COLUMNS.len()],
            pending: Vec::new(),
            pending_rows: 0,
        })
    }

    /// The schema of the batches this pipeline emits.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Feeds one canonical batch; returns the batches ready for output.
    pub fn push(&mut self, batch: RecordBatch) -> Result<Vec<RecordBatch>, DataError> {
        let batch = if self.options.remove_duplicates {
            self.dedup(&batch)?
        } else {
            batch
        };
        let out = match self.options.handle_missing {
            HandleMissing::None => vec![batch],
            HandleMissing::Drop => vec![self.drop_missing(&batch)?],
            HandleMissing::ForwardFill => vec![self.forward_fill(&batch)?],
            HandleMissing::BackwardFill => self.backward_fill(batch, false)?,
        };
        out.into_iter()
            .filter(|b| b.num_rows() > 0)
            .map(|b| self.select(&b))
            .collect()
    }

    /// Flushes rows held back (backward fill) at the end of the input.
    pub fn finish(&mut self) -> Result<Vec<RecordBatch>, DataError> {
        if self.options.handle_missing != HandleMissing::BackwardFill || self.pending.is_empty() {
            return Ok(Vec::new());
        }
        let empty = RecordBatch::new_empty(canonical_schema());
        let out = self.backward_fill(empty, true)?;
        out.into_iter()
            .filter(|b| b.num_rows() > 0)
            .map(|b| self.select(&b))
            .collect()
    }

    fn select(&self, batch: &RecordBatch) -> Result<RecordBatch, DataError> {
        batch
            .project(&self.select)
            .map_err(|e| DataError::Internal(e.to_string()))
    }

    fn dedup(&mut self, batch: &RecordBatch) -> Result<RecordBatch, DataError> {
        let tickers = batch.column(0);
        let tickers = tickers
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .ok_or_else(|| DataError::Internal("ticker column is not Utf8".to_owned()))?;
        let ts = timestamp_array(batch)
            .ok_or_else(|| DataError::Internal("timestamp column is not canonical".to_owned()))?;
        let mut keep = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            let tid = if tickers.is_null(i) {
                u32::MAX
            } else {
                let t = tickers.value(i);
                match self.tickers.get(t) {
                    Some(id) => *id,
                    None => {
                        let id = u32::try_from(self.tickers.len()).unwrap_or(u32::MAX - 1);
                        self.tickers.insert(t.to_owned(), id);
                        id
                    }
                }
            };
            // A missing timestamp is a key of its own, as pandas treats NaT as equal to NaT.
            let key = (tid, if ts.is_null(i) { i64::MIN } else { ts.value(i) });
            let fresh = self.seen.insert(key);
            if fresh && self.seen.len() > self.options.max_dedup_keys {
                return Err(DataError::LimitExceeded(format!(
                    "remove_duplicates keeps every distinct (ticker, timestamp) key in memory and \
                     the input has more than {} (set max_dedup_keys to raise the cap)",
                    self.options.max_dedup_keys
                )));
            }
            keep.push(fresh);
        }
        filter_record_batch(batch, &BooleanArray::from(keep))
            .map_err(|e| DataError::Internal(e.to_string()))
    }

    fn drop_missing(&self, batch: &RecordBatch) -> Result<RecordBatch, DataError> {
        let keep: Vec<bool> = (0..batch.num_rows())
            .map(|i| self.present.iter().all(|&c| batch.column(c).is_valid(i)))
            .collect();
        filter_record_batch(batch, &BooleanArray::from(keep))
            .map_err(|e| DataError::Internal(e.to_string()))
    }

    fn forward_fill(&mut self, batch: &RecordBatch) -> Result<RecordBatch, DataError> {
        let n = batch.num_rows();
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        for &c in &self.present {
            let col = batch.column(c);
            if col.null_count() == 0 {
                self.carry[c] = Some(col.slice(n.saturating_sub(1), n.min(1)));
                continue;
            }
            // Index 0 of `combined` is the value carried from the previous batch (or a null).
            let carried = match &self.carry[c] {
                Some(v) => v.clone(),
                None => arrow::array::new_null_array(col.data_type(), 1),
            };
            let combined = concat(&[carried.as_ref(), col.as_ref()]).map_err(internal)?;
            let mut last: Option<u32> = None;
            let mut idx = Vec::with_capacity(n + 1);
            for i in 0..=n {
                if combined.is_valid(i) {
                    last = u32::try_from(i).ok();
                }
                idx.push(last);
            }
            let filled = take(&combined, &UInt32Array::from(idx), None).map_err(internal)?;
            if let Some(l) = last {
                self.carry[c] = Some(combined.slice(l as usize, 1));
            }
            columns[c] = filled.slice(1, n);
        }
        RecordBatch::try_new(batch.schema(), columns).map_err(internal)
    }

    fn backward_fill(
        &mut self,
        batch: RecordBatch,
        at_end: bool,
    ) -> Result<Vec<RecordBatch>, DataError> {
        self.pending_rows += batch.num_rows();
        self.pending.push(batch);
        let schema = self.pending[0].schema();
        let combined = concat_batches(&schema, &self.pending).map_err(internal)?;
        let n = combined.num_rows();
        // Rows before `ready` have a later non-null value in every column that needs one.
        let mut ready = n;
        let mut columns: Vec<ArrayRef> = combined.columns().to_vec();
        for &c in &self.present {
            let col = combined.column(c);
            if col.null_count() == 0 {
                continue;
            }
            let mut next: Option<u32> = None;
            let mut idx = vec![None; n];
            for i in (0..n).rev() {
                if col.is_valid(i) {
                    next = u32::try_from(i).ok();
                }
                idx[i] = next;
            }
            let last_valid = (0..n).rev().find(|&i| col.is_valid(i)).map_or(0, |i| i + 1);
            ready = ready.min(last_valid);
            columns[c] = take(col.as_ref(), &UInt32Array::from(idx), None).map_err(internal)?;
        }
        if at_end {
            ready = n;
        }
        let filled = RecordBatch::try_new(schema, columns).map_err(internal)?;
        self.pending = vec![combined.slice(ready, n - ready)];
        self.pending_rows = n - ready;
        if self.pending_rows > self.options.max_pending_rows {
            return Err(DataError::LimitExceeded(format!(
                "backward_fill must hold back rows until a later value fills them, and more than \
                 {} rows in a row are missing a value (set max_pending_rows to raise the cap, or \
                 use forward_fill, which streams)",
                self.options.max_pending_rows
            )));
        }
        Ok(vec![filled.slice(0, ready)])
    }
}

fn internal(e: arrow::error::ArrowError) -> DataError {
    DataError::Internal(e.to_string())
}
