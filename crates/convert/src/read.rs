//! Streaming readers: every format yields canonical record batches, one bounded batch at a time.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

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

/// Where a source's batches come from.
enum Batches {
    /// Raw batches from an arrow reader, normalised by [`Source::next_batch`].
    Raw(RawBatches),
    /// Canonical batches from the parallel text decoder.
    Parallel(ParallelText),
}

/// An open input yielding canonical batches.
pub struct Source {
    raw: Batches,
    normalizer: Normalizer,
    file: String,
    header: Vec<String>,
    format: Format,
    progress: SourceProgress,
    rows: u64,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("file", &self.file)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
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
        let (raw, header, progress): (Batches, Vec<String>, SourceProgress) = match format {
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
                let builder = DecoderSpec {
                    schema: Arc::new(Schema::new(fields)),
                    delimiter,
                    batch_size,
                    projection,
                };
                let normalizer = Normalizer::new(name, &projected, default_ticker.clone());
                let ctx = ErrorContext {
                    file: name.to_owned(),
                    format,
                    header: projected.clone(),
                };
                let parallel =
                    ParallelText::start(reader, builder, normalizer, ctx, TEXT_CHUNK_BYTES);
                (
                    Batches::Parallel(parallel),
                    projected,
                    SourceProgress { position, total },
                )
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
                (
                    Batches::Raw(Box::new(json)),
                    names,
                    SourceProgress { position, total },
                )
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
                    Batches::Raw(Box::new(reader)),
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
                    (
                        Batches::Raw(Box::new(reader)),
                        names,
                        SourceProgress { position, total },
                    )
                } else {
                    // Arrow IPC stream format (some tools write it under .arrow).
                    let reader = arrow::ipc::reader::StreamReader::try_new(
                        BufReader::with_capacity(1 << 20, file),
                        None,
                    )
                    .map_err(not_ipc)?;
                    let names = field_names(&reader.schema());
                    (
                        Batches::Raw(Box::new(reader)),
                        names,
                        SourceProgress { position, total },
                    )
                }
            }
        };
        if is_columnar(format) && !map_columns(&header).iter().any(Option::is_some) {
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
        let out = match &mut self.raw {
            Batches::Parallel(p) => p.next_batch()?,
            Batches::Raw(raw) => match raw.next() {
                None => None,
                Some(Err(e)) => {
                    let ctx = ErrorContext {
                        file: self.file.clone(),
                        format: self.format,
                        header: self.header.clone(),
                    };
                    return Err(ctx.read_error(e, 0));
                }
                Some(Ok(batch)) => Some(self.normalizer.normalize(&batch)?),
            },
        };
        if let Some(b) = &out {
            self.rows += b.num_rows() as u64;
            if self.format == Format::Parquet {
                self.progress.position.store(self.rows, Ordering::Relaxed);
            }
        }
        Ok(out)
    }
}

/// What a reader error needs to name the file, row and column.
#[derive(Debug, Clone)]
struct ErrorContext {
    file: String,
    format: Format,
    header: Vec<String>,
}

impl ErrorContext {
    /// Maps a reader error to a `DataError`; `row_offset` is added to text row numbers (the
    /// rows before the chunk the error happened in).
    fn read_error(&self, e: ArrowError, row_offset: u64) -> DataError {
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
            // indices and 0-based lines counted from the start of the decoded chunk; rows in
            // our errors are 1-based data rows of the whole file.
            if let Some((col, line)) = parse_csv_location(&msg) {
                let column = self.header.get(col).cloned();
                let value = msg
                    .split('\'')
                    .nth(1)
                    .map(|v| format!("'{v}' is not a valid {}", column_kind(column.as_deref())))
                    .unwrap_or(msg.clone());
                return DataError::Malformed {
                    file: self.file.clone(),
                    row: Some(row_offset + line + 1),
                    column,
                    message: value,
                };
            }
            if let Some(line) = number_after(&msg, "for line ") {
                return DataError::Malformed {
                    file: self.file.clone(),
                    row: Some(row_offset + line),
                    column: None,
                    message: "wrong number of fields".to_owned(),
                };
            }
        }
        DataError::malformed(&self.file, msg)
    }
}

/// How to build a CSV decoder for one chunk (arrow's builder is consumed by each build).
#[derive(Debug, Clone)]
struct DecoderSpec {
    schema: arrow::datatypes::SchemaRef,
    delimiter: u8,
    batch_size: usize,
    projection: Vec<usize>,
}

impl DecoderSpec {
    fn build(&self) -> arrow::csv::reader::Decoder {
        arrow::csv::ReaderBuilder::new(self.schema.clone())
            .with_header(false)
            .with_delimiter(self.delimiter)
            .with_batch_size(self.batch_size)
            .with_projection(self.projection.clone())
            .build_decoder()
    }
}

/// Bytes per chunk handed to a text decoder thread: large enough to amortise the hand-off, small
/// enough that the chunks in flight stay a few MB.
const TEXT_CHUNK_BYTES: usize = 1 << 20;

/// A decoded chunk: its canonical batches (rows in errors relative to the chunk) or an error.
type ChunkResult = Result<Vec<RecordBatch>, DataError>;

/// Text (csv/txt) decoding on several threads.
///
/// A splitter thread cuts the input into chunks at record boundaries (newlines outside quotes,
/// found by quote parity, which RFC 4180 doubling preserves) and deals them round-robin to
/// decoder threads, each parsing and normalising its chunk. Chunks are consumed in the order they
/// were dealt, so output order is the file order. Every channel holds one item, so memory stays
/// at a few chunks whatever the file size. Dropping the source closes the channels and the
/// threads exit at their next send.
struct ParallelText {
    outputs: Vec<mpsc::Receiver<ChunkResult>>,
    next_worker: usize,
    ready: std::collections::VecDeque<RecordBatch>,
    rows_before_chunk: u64,
    done: bool,
}

impl ParallelText {
    fn start<R: Read + Send + 'static>(
        reader: R,
        builder: DecoderSpec,
        normalizer: Normalizer,
        ctx: ErrorContext,
        chunk_bytes: usize,
    ) -> Self {
        let workers = std::thread::available_parallelism()
            .map_or(2, std::num::NonZeroUsize::get)
            .clamp(1, 4);
        let mut inputs = Vec::with_capacity(workers);
        let mut outputs = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (in_tx, in_rx) = mpsc::sync_channel::<Result<Vec<u8>, DataError>>(1);
            let (out_tx, out_rx) = mpsc::sync_channel::<ChunkResult>(1);
            let builder = builder.clone();
            let normalizer = normalizer.clone();
            let ctx = ctx.clone();
            std::thread::spawn(move || {
                for chunk in in_rx {
                    let result = chunk.and_then(|c| decode_chunk(&c, &builder, &normalizer, &ctx));
                    if out_tx.send(result).is_err() {
                        return;
                    }
                }
            });
            inputs.push(in_tx);
            outputs.push(out_rx);
        }
        let file = ctx.file.clone();
        std::thread::spawn(move || split_chunks(reader, &inputs, &file, chunk_bytes));
        Self {
            outputs,
            next_worker: 0,
            ready: std::collections::VecDeque::new(),
            rows_before_chunk: 0,
            done: false,
        }
    }

    fn next_batch(&mut self) -> Result<Option<RecordBatch>, DataError> {
        loop {
            if let Some(b) = self.ready.pop_front() {
                return Ok(Some(b));
            }
            if self.done {
                return Ok(None);
            }
            let worker = self.next_worker;
            self.next_worker = (worker + 1) % self.outputs.len();
            match self.outputs[worker].recv() {
                // The splitter closed this worker's input: the file is done.
                Err(_) => self.done = true,
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(shift_row(e, self.rows_before_chunk));
                }
                Ok(Ok(batches)) => {
                    self.rows_before_chunk +=
                        batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
                    self.ready.extend(batches);
                }
            }
        }
    }
}

fn shift_row(e: DataError, offset: u64) -> DataError {
    match e {
        DataError::Malformed {
            file,
            row,
            column,
            message,
        } => DataError::Malformed {
            file,
            row: row.map(|r| r + offset),
            column,
            message,
        },
        other => other,
    }
}

fn decode_chunk(
    chunk: &[u8],
    builder: &DecoderSpec,
    normalizer: &Normalizer,
    ctx: &ErrorContext,
) -> ChunkResult {
    let mut decoder = builder.build();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut rows: u64 = 0;
    loop {
        loop {
            // An empty slice at the end of the chunk tells the decoder the input ended, which
            // completes a final record without a trailing newline.
            let n = decoder
                .decode(&chunk[pos..])
                .map_err(|e| ctx.read_error(e, rows))?;
            pos += n;
            if n == 0 || decoder.capacity() == 0 {
                break;
            }
        }
        match decoder.flush().map_err(|e| ctx.read_error(e, 0))? {
            Some(batch) => {
                out.push(normalizer.normalize_at(&batch, rows + 1)?);
                rows += batch.num_rows() as u64;
            }
            None => return Ok(out),
        }
    }
}

/// Cuts `reader` into chunks ending at record boundaries and deals them round-robin.
fn split_chunks<R: Read>(
    mut reader: R,
    workers: &[mpsc::SyncSender<Result<Vec<u8>, DataError>>],
    file: &str,
    chunk_bytes: usize,
) {
    let mut carry: Vec<u8> = Vec::new();
    let mut next = 0;
    loop {
        let mut block = std::mem::take(&mut carry);
        let start = block.len();
        block.resize(start + chunk_bytes.max(1), 0);
        let mut filled = start;
        let mut eof = false;
        while filled < block.len() {
            match reader.read(&mut block[filled..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = workers[next].send(Err(DataError::io(file, e)));
                    return;
                }
            }
        }
        block.truncate(filled);
        if eof {
            if !block.is_empty() {
                let _ = workers[next].send(Ok(block));
            }
            return;
        }
        match last_record_end(&block) {
            Some(end) => {
                carry = block.split_off(end);
                if workers[next].send(Ok(block)).is_err() {
                    return;
                }
                next = (next + 1) % workers.len();
            }
            // One record longer than a chunk: keep reading into the same block.
            None => carry = block,
        }
    }
}

/// The end (exclusive) of the last complete record in `block`, which starts at a record start.
fn last_record_end(block: &[u8]) -> Option<usize> {
    if !block.contains(&b'"') {
        return block.iter().rposition(|&b| b == b'\n').map(|i| i + 1);
    }
    let mut in_quotes = false;
    let mut end = None;
    for (i, &b) in block.iter().enumerate() {
        if b == b'"' {
            in_quotes = !in_quotes;
        } else if b == b'\n' && !in_quotes {
            end = Some(i + 1);
        }
    }
    end
}

/// Whether the format carries its own schema (Parquet and Arrow IPC), so no header row is read.
fn is_columnar(format: Format) -> bool {
    matches!(format, Format::Parquet | Format::Feather | Format::Arrow)
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;

    fn parallel(text: &str, chunk: usize) -> ParallelText {
        let header: Vec<String> = ["ticker", "timestamp", "close"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let fields: Vec<Field> = header
            .iter()
            .zip(map_columns(&header))
            .map(|(h, r)| Field::new(h, r.map_or(DataType::Utf8, text_read_type), true))
            .collect();
        let spec = DecoderSpec {
            schema: Arc::new(Schema::new(fields)),
            delimiter: b',',
            batch_size: 3,
            projection: vec![0, 1, 2],
        };
        let ctx = ErrorContext {
            file: "t.csv".to_owned(),
            format: Format::Csv,
            header: header.clone(),
        };
        let normalizer = Normalizer::new("t.csv", &header, None);
        ParallelText::start(
            std::io::Cursor::new(text.as_bytes().to_vec()),
            spec,
            normalizer,
            ctx,
            chunk,
        )
    }

    #[test]
    fn record_ends_respect_quotes() {
        assert_eq!(last_record_end(b"a,b\nc,d\ne"), Some(8));
        assert_eq!(last_record_end(b"a,\"x\ny\"\nc,\"p\nq"), Some(8));
        assert_eq!(last_record_end(b"\"a\"\"\nb\""), None);
        assert_eq!(last_record_end(b"abc"), None);
    }

    #[test]
    fn chunked_decoding_keeps_order_quoted_newlines_and_row_numbers()
    -> Result<(), Box<dyn std::error::Error>> {
        let mut text = String::new();
        for i in 0..40 {
            if i == 17 {
                text.push_str("\"MULTI\nLINE, \"\"Q\"\"\",2024-01-01,17\n");
            } else {
                text.push_str(&format!("T{i},2024-01-01,{i}\n"));
            }
        }
        // Chunks far smaller than a record force records to span chunk reads.
        for chunk in [7, 16, 64, 1 << 20] {
            let mut p = parallel(&text, chunk);
            let mut closes = Vec::new();
            let mut tickers = Vec::new();
            while let Some(b) = p.next_batch()? {
                closes.extend(
                    b.column(5)
                        .as_primitive::<arrow::datatypes::Float64Type>()
                        .iter()
                        .flatten(),
                );
                tickers.extend(
                    b.column(0)
                        .as_string::<i32>()
                        .iter()
                        .flatten()
                        .map(str::to_owned),
                );
            }
            let want: Vec<f64> = (0..40).map(f64::from).collect();
            assert_eq!(closes, want, "chunk {chunk}");
            assert_eq!(tickers[17], "MULTI\nLINE, \"Q\"");
        }
        let bad = format!("{text}T40,2024-01-01,x\n");
        for chunk in [16, 1 << 20] {
            let mut p = parallel(&bad, chunk);
            let err = loop {
                match p.next_batch() {
                    Ok(Some(_)) => {}
                    Ok(None) => return Err("expected an error".into()),
                    Err(e) => break e,
                }
            };
            assert!(
                matches!(&err, DataError::Malformed { row: Some(41), column: Some(c), .. } if c == "close"),
                "chunk {chunk}: {err}"
            );
        }
        Ok(())
    }
}
