//! Streaming readers: every format yields canonical record batches, one bounded batch at a time.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::datatypes::{DataType, Field, Schema};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::error::DataError;
use crate::format::Format;
use crate::schema::{Normalizer, map_columns, text_read_type};

/// Rows per batch unless the caller asks otherwise: large enough to amortise per-batch work,
/// small enough (a few MB of market data) to keep memory flat.
pub const DEFAULT_BATCH_SIZE: usize = 128 * 1024;

type RawBatches = Box<dyn Iterator<Item = Result<RecordBatch, ArrowError>> + Send>;

/// Counts bytes read so progress can be reported as bytes read of the total.
struct CountingReader<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Seek> Seek for CountingReader<R> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        // Progress follows the read position, which the IPC file reader moves around.
        let p = self.inner.seek(pos)?;
        self.count.store(p, Ordering::Relaxed);
        Ok(p)
    }
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Progress of a source: a position and the total it runs to (bytes or rows).
#[derive(Debug, Clone)]
pub struct SourceProgress {
    position: Arc<AtomicU64>,
    total: u64,
}

impl SourceProgress {
    /// The fraction read, in `0.0..=1.0`.
    pub fn fraction(&self) -> f64 {
        if self.total == 0 {
            return 1.0;
        }
        #[allow(clippy::cast_precision_loss)]
        let f = self.position.load(Ordering::Relaxed) as f64 / self.total as f64;
        f.clamp(0.0, 1.0)
    }

    /// Bytes (or rows, for parquet) read so far.
    pub fn position(&self) -> u64 {
        self.position.load(Ordering::Relaxed)
    }

    /// The total bytes (or rows, for parquet).
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// An open input yielding canonical batches.
pub struct Source {
    raw: RawBatches,
    normalizer: Normalizer,
    file: String,
    header: Vec<String>,
    format: Format,
    progress: SourceProgress,
    rows: u64,
}

impl Source {
    /// Opens `path` as `format`. `name` identifies the file in errors (the caller's relative name).
    pub fn open(
        path: &Path,
        name: &str,
        format: Format,
        batch_size: usize,
        default_ticker: Option<String>,
    ) -> Result<Self, DataError> {
        let batch_size = batch_size.max(1);
        let file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => DataError::NotFound(name.to_owned()),
            _ => DataError::io(path, e),
        })?;
        let total = file.metadata().map_err(|e| DataError::io(path, e))?.len();
        let position = Arc::new(AtomicU64::new(0));
        let counting = CountingReader {
            inner: file,
            count: position.clone(),
        };
        let (raw, header, progress): (RawBatches, Vec<String>, SourceProgress) = match format {
            Format::Csv | Format::Txt => {
                let mut reader = BufReader::with_capacity(1 << 20, counting);
                let (delimiter, header) = read_header(&mut reader, name, format)?;
                let roles = map_columns(&header);
                let projection: Vec<usize> = roles
                    .iter()
                    .enumerate()
                    .filter_map(|(i, r)| r.map(|_| i))
                    .collect();
                if projection.is_empty() {
                    return Err(no_columns(name, &header));
                }
                let fields: Vec<Field> = header
                    .iter()
                    .zip(&roles)
                    .map(|(h, r)| Field::new(h, r.map_or(DataType::Utf8, text_read_type), true))
                    .collect();
                let projected: Vec<String> =
                    projection.iter().map(|&i| header[i].clone()).collect();
                let csv = arrow::csv::ReaderBuilder::new(Arc::new(Schema::new(fields)))
                    .with_header(false)
                    .with_delimiter(delimiter)
                    .with_batch_size(batch_size)
                    .with_projection(projection)
                    .build_buffered(reader)
                    .map_err(|e| DataError::malformed(name, e.to_string()))?;
                (Box::new(csv), projected, SourceProgress { position, total })
            }
            Format::Json | Format::Ndjson => {
                let mut reader = BufReader::with_capacity(1 << 20, counting);
                let keys = first_json_keys(&mut reader, name)?;
                let roles = map_columns(&keys);
                let fields: Vec<Field> = keys
                    .iter()
                    .zip(&roles)
                    .filter_map(|(k, r)| r.map(|r| Field::new(k, text_read_type(r), true)))
                    .collect();
                if fields.is_empty() && !keys.is_empty() {
                    return Err(no_columns(name, &keys));
                }
                let names: Vec<String> = fields.iter().map(|f| f.name().clone()).collect();
                let json = arrow::json::ReaderBuilder::new(Arc::new(Schema::new(fields)))
                    .with_batch_size(batch_size)
                    .with_coerce_primitive(true)
                    .with_flatten(format == Format::Json)
                    .build(reader)
                    .map_err(|e| DataError::malformed(name, e.to_string()))?;
                (Box::new(json), names, SourceProgress { position, total })
            }
            Format::Parquet => {
                let file = counting.inner;
                let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| {
                    DataError::malformed(name, format!("not a readable parquet file: {e}"))
                })?;
                let rows = u64::try_from(builder.metadata().file_metadata().num_rows())
                    .unwrap_or_default();
                let names = field_names(builder.schema());
                let reader = builder
                    .with_batch_size(batch_size)
                    .build()
                    .map_err(|e| DataError::malformed(name, e.to_string()))?;
                // Parquet progress counts rows: column chunks are read out of order.
                (
                    Box::new(reader),
                    names,
                    SourceProgress {
                        position,
                        total: rows,
                    },
                )
            }
            Format::Feather | Format::Arrow => {
                let mut file = counting;
                let mut magic = [0u8; 6];
                let is_file_format = file.read_exact(&mut magic).is_ok() && &magic == b"ARROW1";
                file.inner
                    .seek(SeekFrom::Start(0))
                    .map_err(|e| DataError::io(path, e))?;
                let not_ipc = |e: ArrowError| {
                    DataError::malformed(name, format!("not a readable Arrow IPC file: {e}"))
                };
                if is_file_format {
                    let reader = arrow::ipc::reader::FileReader::try_new(
                        BufReader::with_capacity(1 << 20, file),
                        None,
                    )
                    .map_err(not_ipc)?;
                    let names = field_names(&reader.schema());
                    (Box::new(reader), names, SourceProgress { position, total })
                } else {
                    // Arrow IPC stream format (some tools write it under .arrow).
                    let reader = arrow::ipc::reader::StreamReader::try_new(
                        BufReader::with_capacity(1 << 20, file),
                        None,
                    )
                    .map_err(not_ipc)?;
                    let names = field_names(&reader.schema());
                    (Box::new(reader), names, SourceProgress { position, total })
                }
            }
        };
        if format.is_columnar() && !map_columns(&header).iter().any(Option::is_some) {
            return Err(no_columns(name, &header));
        }
        let normalizer = Normalizer::new(name, &header, default_ticker);
        Ok(Self {
            raw,
            normalizer,
            file: name.to_owned(),
            header,
            format,
            progress,
            rows: 0,
        })
    }

    /// The canonical columns the input carries.
    pub fn present_columns(&self) -> Vec<&'static str> {
        self.normalizer.present_columns()
    }

    /// A handle for reading progress from another thread.
    pub fn progress(&self) -> SourceProgress {
        self.progress.clone()
    }

    /// Rows read so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The next canonical batch, or `None` at the end of the input.
    pub fn next_batch(&mut self) -> Result<Option<RecordBatch>, DataError> {
        match self.raw.next() {
            None => Ok(None),
            Some(Err(e)) => Err(self.read_error(e)),
            Some(Ok(batch)) => {
                let out = self.normalizer.normalize(&batch)?;
                self.rows += batch.num_rows() as u64;
                if self.format == Format::Parquet {
                    self.progress.position.store(self.rows, Ordering::Relaxed);
                }
                Ok(Some(out))
            }
        }
    }

    /// Maps a reader error to a `DataError` naming the file and, for text, the row and column.
    fn read_error(&self, e: ArrowError) -> DataError {
        if let ArrowError::IoError(_, io) = &e
            && !matches!(
                io.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
            )
        {
            return DataError::io(&self.file, std::io::Error::new(io.kind(), io.to_string()));
        }
        let msg = e.to_string();
        if matches!(self.format, Format::Csv | Format::Txt) {
            // arrow-csv reports "... for column {i} at line {n}" with 0-based projected column
            // indices and 0-based lines counted from the first data row (we consumed the
            // header); rows in our errors are 1-based data rows.
            if let Some((col, line)) = parse_csv_location(&msg) {
                let column = self.header.get(col).cloned();
                let value = msg
                    .split('\'')
                    .nth(1)
                    .map(|v| format!("'{v}' is not a valid {}", column_kind(column.as_deref())))
                    .unwrap_or(msg.clone());
                return DataError::Malformed {
                    file: self.file.clone(),
                    row: Some(line + 1),
                    column,
                    message: value,
                };
            }
            if let Some(line) = number_after(&msg, "for line ") {
                return DataError::Malformed {
                    file: self.file.clone(),
                    row: Some(line),
                    column: None,
                    message: "wrong number of fields".to_owned(),
                };
            }
        }
        DataError::malformed(&self.file, msg)
    }
}

impl Format {
    fn is_columnar(self) -> bool {
        matches!(self, Format::Parquet | Format::Feather | Format::Arrow)
    }
}

fn column_kind(name: Option<&str>) -> &'static str {
    match name {
        Some(n)
            if map_columns(&[n.to_owned()])
                .first()
                .copied()
                .flatten()
                .map(text_read_type)
                == Some(DataType::Float64) =>
        {
            "number"
        }
        _ => "value",
    }
}

fn number_after(msg: &str, marker: &str) -> Option<u64> {
    let rest = &msg[msg.find(marker)? + marker.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn parse_csv_location(msg: &str) -> Option<(usize, u64)> {
    let col = number_after(msg, "for column ")?;
    let line = number_after(msg, " at line ")?;
    Some((usize::try_from(col).ok()?, line))
}

fn no_columns(name: &str, header: &[String]) -> DataError {
    let shown: Vec<&str> = header.iter().take(10).map(String::as_str).collect();
    DataError::malformed(
        name,
        format!(
            "no recognised columns (found {shown:?}; expected ticker, timestamp/date, open, high, low, close, vol)"
        ),
    )
}

fn field_names(schema: &Schema) -> Vec<String> {
    schema.fields().iter().map(|f| f.name().clone()).collect()
}

/// Reads the header line and picks the delimiter: csv is comma-separated; txt is comma-separated
/// for Stooq headers, otherwise tab-separated if the header has a tab, else comma-separated.
fn read_header<R: BufRead>(
    reader: &mut R,
    name: &str,
    format: Format,
) -> Result<(u8, Vec<String>), DataError> {
    let mut line = Vec::new();
    reader
        .read_until(b'\n', &mut line)
        .map_err(|e| DataError::io(name, e))?;
    let text = std::str::from_utf8(&line)
        .map_err(|_| DataError::malformed(name, "the header line is not UTF-8 text"))?;
    let text = text
        .trim_start_matches('\u{feff}')
        .trim_end_matches(['\r', '\n']);
    if text.trim().is_empty() {
        return Err(DataError::malformed(
            name,
            "the file is empty (no header line)",
        ));
    }
    let delimiter = if format == Format::Txt
        && !text.contains("<TICKER>")
        && !text.contains("<DATE>")
        && text.contains('\t')
    {
        b'\t'
    } else {
        b','
    };
    let header = text
        .split(char::from(delimiter))
        .map(|h| h.trim().trim_matches('"').to_owned())
        .collect();
    Ok((delimiter, header))
}

/// Learns the column names from the first record of a JSON array or NDJSON file without
/// consuming input: the record must fit in the reader's buffer (1 MiB), far more than a row of
/// market data needs.
fn first_json_keys<R: Read>(
    reader: &mut BufReader<R>,
    name: &str,
) -> Result<Vec<String>, DataError> {
    let data = reader.fill_buf().map_err(|e| DataError::io(name, e))?;
    let data = data
        .strip_prefix(b"\xEF\xBB\xBF".as_slice())
        .unwrap_or(data);
    let start = data
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(data.len());
    let mut body = &data[start..];
    if body.is_empty() {
        return Err(DataError::malformed(name, "the file is empty"));
    }
    if body[0] == b'[' {
        body = &body[1..];
        let next = body.iter().position(|b| !b.is_ascii_whitespace());
        if next.map(|i| body[i]) == Some(b']') {
            return Ok(Vec::new());
        }
    }
    let mut stream = serde_json::Deserializer::from_slice(body).into_iter::<serde_json::Value>();
    match stream.next() {
        Some(Ok(serde_json::Value::Object(map))) => Ok(map.keys().cloned().collect()),
        Some(Ok(_)) => Err(DataError::malformed(
            name,
            "expected JSON records (objects) with column names as keys",
        )),
        Some(Err(e)) if e.is_eof() => Err(DataError::malformed(
            name,
            "the first record is truncated or larger than 1 MiB",
        )),
        Some(Err(e)) => Err(DataError::malformed(name, format!("not valid JSON: {e}"))),
        None => Err(DataError::malformed(name, "the file is empty")),
    }
}
