//! Streaming writers: batches go straight to the temporary output file.

use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::ZstdLevel;
use parquet::file::properties::WriterProperties;

use crate::error::DataError;
use crate::format::{Compression, Format};
use crate::paths::OutputFile;
use crate::schema::timestamps_as_text;

/// Timestamps in text outputs: the original's `%Y-%m-%d %H:%M:%S`, with fractional seconds only
/// when present, which our readers parse back exactly.
pub const TEXT_TIMESTAMP_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.f";

/// Rows per parquet row group: the writer buffers a whole row group, so 512K rows keeps that to
/// tens of MB for market data while still giving readers large, well-compressed column chunks.
const ROW_GROUP_ROWS: usize = 512 * 1024;

/// A text output (csv, txt, json, ndjson): batches are encoded to bytes by [`encode_text`],
/// which is pure so callers may run it on other threads, and appended in order.
pub struct TextSink {
    out: OutputFile,
    format: Format,
    schema: SchemaRef,
    started: bool,
    any_record: bool,
}

impl std::fmt::Debug for TextSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextSink")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl TextSink {
    /// The format being written.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Appends a batch encoded by [`encode_text`] (`header` true only for the first batch).
    pub fn write_encoded(&mut self, bytes: &[u8], rows: usize) -> Result<(), DataError> {
        use std::io::Write as _;
        let io = |e| DataError::io("output", e);
        match self.format {
            Format::Json => {
                if !self.started {
                    self.out.write_all(b"[").map_err(io)?;
                }
                if rows > 0 {
                    if self.any_record {
                        self.out.write_all(b",").map_err(io)?;
                    }
                    // One object per line: JSON text never holds a raw newline (strings escape
                    // it), so line breaks are exactly the record separators.
                    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
                    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
                        if i > 0 {
                            self.out.write_all(b",").map_err(io)?;
                        }
                        self.out.write_all(line).map_err(io)?;
                    }
                    self.any_record = true;
                }
            }
            _ => self.out.write_all(bytes).map_err(io)?,
        }
        self.started = true;
        Ok(())
    }

    fn finish(mut self) -> Result<OutputFile, DataError> {
        use std::io::Write as _;
        let io = |e| DataError::io("output", e);
        if !self.started {
            // Header-only outputs still carry the header.
            let empty = RecordBatch::new_empty(self.schema.clone());
            let bytes = encode_text(&empty, self.format, true)?;
            self.write_encoded(&bytes, 0)?;
        }
        if self.format == Format::Json {
            self.out.write_all(b"]").map_err(io)?;
        }
        Ok(self.out)
    }
}

/// Encodes one batch as csv (`header` writes the column names first), tab-separated txt, or
/// newline-delimited JSON records (also the body of a JSON array, see [`TextSink`]).
/// Timestamps are written by [`timestamps_as_text`].
pub fn encode_text(
    batch: &RecordBatch,
    format: Format,
    header: bool,
) -> Result<Vec<u8>, DataError> {
    let batch = timestamps_as_text(batch)?;
    let mut buf = Vec::with_capacity(batch.num_rows() * 96 + 256);
    match format {
        Format::Csv | Format::Txt => {
            let delimiter = if format == Format::Txt { b'\t' } else { b',' };
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(header)
                .with_delimiter(delimiter)
                .with_timestamp_format(TEXT_TIMESTAMP_FORMAT.to_owned())
                .build(&mut buf);
            w.write(&batch).map_err(write_error)?;
        }
        _ => {
            let mut w = arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .with_timestamp_format(TEXT_TIMESTAMP_FORMAT.to_owned())
                .build::<_, arrow::json::writer::LineDelimited>(&mut buf);
            w.write(&batch).map_err(write_error)?;
            w.finish().map_err(write_error)?;
        }
    }
    Ok(buf)
}

/// An output being written in one of the supported formats.
pub enum Sink {
    /// csv, txt, json or ndjson.
    Text(TextSink),
    /// Parquet.
    Parquet(Box<ArrowWriter<OutputFile>>),
    /// Arrow IPC file (feather v2, arrow).
    Ipc(Box<arrow::ipc::writer::FileWriter<OutputFile>>),
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Sink::Text(_) => "Sink::Text",
            Sink::Parquet(_) => "Sink::Parquet",
            Sink::Ipc(_) => "Sink::Ipc",
        })
    }
}

impl Sink {
    /// Starts writing `schema` as `format` into `out`.
    pub fn new(
        out: OutputFile,
        format: Format,
        schema: &SchemaRef,
        compression: Compression,
    ) -> Result<Self, DataError> {
        let internal = |e: &dyn std::fmt::Display| DataError::Internal(e.to_string());
        Ok(match format {
            Format::Csv | Format::Txt | Format::Json | Format::Ndjson => Sink::Text(TextSink {
                out,
                format,
                schema: schema.clone(),
                started: false,
                any_record: false,
            }),
            Format::Parquet => {
                let codec = match compression {
                    Compression::Snappy => parquet::basic::Compression::SNAPPY,
                    Compression::Zstd => parquet::basic::Compression::ZSTD(
                        ZstdLevel::try_new(3).map_err(|e| internal(&e))?,
                    ),
                    Compression::None => parquet::basic::Compression::UNCOMPRESSED,
                };
                let props = WriterProperties::builder()
                    .set_compression(codec)
                    .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
                    .build();
                Sink::Parquet(Box::new(
                    ArrowWriter::try_new(out, schema.clone(), Some(props))
                        .map_err(|e| internal(&e))?,
                ))
            }
            Format::Feather | Format::Arrow => Sink::Ipc(Box::new(
                arrow::ipc::writer::FileWriter::try_new(out, schema).map_err(|e| internal(&e))?,
            )),
        })
    }

    /// Appends one batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), DataError> {
        match self {
            Sink::Text(t) => {
                let bytes = encode_text(batch, t.format, !t.started)?;
                t.write_encoded(&bytes, batch.num_rows())
            }
            Sink::Parquet(w) => w
                .write(batch)
                .map_err(|e| write_error(ArrowError::ExternalError(Box::new(e)))),
            Sink::Ipc(w) => w.write(batch).map_err(write_error),
        }
    }

    /// Finishes the format's trailer and returns the output, ready to commit.
    pub fn finish(self) -> Result<OutputFile, DataError> {
        match self {
            Sink::Text(t) => t.finish(),
            Sink::Parquet(w) => w
                .into_inner()
                .map_err(|e| write_error(ArrowError::ExternalError(Box::new(e)))),
            Sink::Ipc(mut w) => {
                w.finish().map_err(write_error)?;
                w.into_inner().map_err(write_error)
            }
        }
    }
}

fn write_error(e: ArrowError) -> DataError {
    match e {
        ArrowError::IoError(_, io) => DataError::io("output", io),
        ArrowError::ExternalError(inner) => {
            match inner.downcast::<parquet::errors::ParquetError>() {
                Ok(p) => match *p {
                    parquet::errors::ParquetError::External(ext) => {
                        match ext.downcast::<std::io::Error>() {
                            Ok(io) => DataError::io("output", *io),
                            Err(other) => DataError::Internal(other.to_string()),
                        }
                    }
                    other => DataError::Internal(other.to_string()),
                },
                Err(other) => DataError::Internal(other.to_string()),
            }
        }
        other => DataError::Internal(other.to_string()),
    }
}
