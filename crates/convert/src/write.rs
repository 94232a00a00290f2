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

/// An output being written in one of the supported formats.
pub enum Sink {
    /// csv or txt.
    Csv(arrow::csv::Writer<OutputFile>),
    /// JSON array of records.
    Json(arrow::json::ArrayWriter<OutputFile>),
    /// Newline-delimited JSON.
    Ndjson(arrow::json::LineDelimitedWriter<OutputFile>),
    /// Parquet.
    Parquet(Box<ArrowWriter<OutputFile>>),
    /// Arrow IPC file (feather v2, arrow).
    Ipc(arrow::ipc::writer::FileWriter<OutputFile>),
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
            Format::Csv | Format::Txt => {
                let delimiter = if format == Format::Txt { b'\t' } else { b',' };
                Sink::Csv(
                    arrow::csv::WriterBuilder::new()
                        .with_header(true)
                        .with_delimiter(delimiter)
                        .with_timestamp_format(TEXT_TIMESTAMP_FORMAT.to_owned())
                        .build(out),
                )
            }
            Format::Json => Sink::Json(
                arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .with_timestamp_format(TEXT_TIMESTAMP_FORMAT.to_owned())
                    .build(out),
            ),
            Format::Ndjson => Sink::Ndjson(
                arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .with_timestamp_format(TEXT_TIMESTAMP_FORMAT.to_owned())
                    .build(out),
            ),
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
            Format::Feather | Format::Arrow => Sink::Ipc(
                arrow::ipc::writer::FileWriter::try_new(out, schema).map_err(|e| internal(&e))?,
            ),
        })
    }

    /// Appends one batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), DataError> {
        match self {
            Sink::Csv(w) => w.write(&timestamps_as_text(batch)?).map_err(write_error),
            Sink::Json(w) => w.write(&timestamps_as_text(batch)?).map_err(write_error),
            Sink::Ndjson(w) => w.write(&timestamps_as_text(batch)?).map_err(write_error),
            Sink::Parquet(w) => w
                .write(batch)
                .map_err(|e| write_error(ArrowError::ExternalError(Box::new(e)))),
            Sink::Ipc(w) => w.write(batch).map_err(write_error),
        }
    }

    /// Finishes the format's trailer and returns the output, ready to commit.
    pub fn finish(self) -> Result<OutputFile, DataError> {
        match self {
            Sink::Csv(w) => Ok(w.into_inner()),
            Sink::Json(mut w) => {
                w.finish().map_err(write_error)?;
                Ok(w.into_inner())
            }
            Sink::Ndjson(mut w) => {
                w.finish().map_err(write_error)?;
                Ok(w.into_inner())
            }
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
