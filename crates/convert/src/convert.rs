//! File-to-file conversion: read, normalise, transform and write, streaming batch by batch.
//!
//! Reading (parsing and normalisation) runs on its own thread and hands batches to the writer
//! (encoding and compression) through a channel of [`CHANNEL_DEPTH`] batches, so the two overlap
//! on two cores while memory stays bounded by a handful of batches plus the writer's buffer.

use std::path::Path;
use std::sync::mpsc;

use arrow::record_batch::RecordBatch;

use crate::error::DataError;
use crate::format::Format;
use crate::options::{ConvertOptions, Pipeline};
use crate::paths::OutputFile;
use crate::read::{Source, SourceProgress};
use crate::write::{Sink, encode_text};

/// Batches in flight between the reader and the writer.
const CHANNEL_DEPTH: usize = 2;

/// Threads encoding text outputs (csv, txt, json, ndjson).
const ENCODER_THREADS: usize = 2;

/// Rows per piece handed to a text encoder.
const ENCODE_ROWS: usize = 16 * 1024;

/// A conversion's progress, reported between batches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvertProgress {
    /// Fraction of the input read, `0.0..=1.0`.
    pub fraction: f64,
    /// Rows written so far.
    pub rows: u64,
    /// Input position (bytes; rows for parquet).
    pub position: u64,
    /// Input size (bytes; rows for parquet).
    pub total: u64,
}

/// What a conversion produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertSummary {
    /// Rows written.
    pub rows: u64,
    /// Output column names, in order.
    pub columns: Vec<String>,
}

/// One conversion's files and formats.
#[derive(Debug, Clone)]
pub struct ConvertJob<'a> {
    /// The input file.
    pub input: &'a Path,
    /// How the input is named in errors (the caller's relative name).
    pub input_name: &'a str,
    /// The input format.
    pub input_format: Format,
    /// The output file.
    pub output: &'a Path,
    /// The output format.
    pub output_format: Format,
    /// Ticker for inputs without a ticker column (downloads).
    pub default_ticker: Option<String>,
}

/// Converts the job's input to its output.
///
/// The output is written to a temporary file beside `output` and renamed into place only after
/// the last byte is written and synced; on any error or cancellation nothing appears under the
/// final name. `cancelled` is polled between batches.
pub fn convert_file(
    job: &ConvertJob<'_>,
    options: &ConvertOptions,
    progress: &mut dyn FnMut(ConvertProgress),
    cancelled: &dyn Fn() -> bool,
) -> Result<ConvertSummary, DataError> {
    // Refuse an existing output before doing any work.
    let out = OutputFile::create(job.output, options.overwrite, options.owner.as_deref())?;
    let mut source = Source::open(
        job.input,
        job.input_name,
        job.input_format,
        options.batch_size,
        job.default_ticker.clone(),
    )?;
    let mut pipeline = Pipeline::new(options, &source.present_columns())?;
    let schema = pipeline.schema();
    let mut sink = Sink::new(out, job.output_format, &schema, options.compression)?;
    let src_progress = source.progress();

    let (tx, rx) = mpsc::sync_channel::<Result<RecordBatch, DataError>>(CHANNEL_DEPTH);
    let mut rows: u64 = 0;
    let mut wrote_any = false;
    let result = std::thread::scope(|scope| {
        // Owning the receiver here means an early return drops it before the scope joins the
        // reader, so a reader blocked on a full channel wakes up (its send fails) and exits.
        let rx = rx;
        scope.spawn(move || read_all(&mut source, &mut pipeline, &tx));
        let mut last_reported = -1.0_f64;
        if let Sink::Text(text) = &mut sink {
            // Text encoding costs as much as parsing: spread it over encoder threads, dealt
            // round-robin by a dispatcher and collected here in the same order.
            let format = text.format();
            let encoders = ENCODER_THREADS;
            let mut outputs = Vec::with_capacity(encoders);
            let mut inputs = Vec::with_capacity(encoders);
            for _ in 0..encoders {
                let (in_tx, in_rx) =
                    mpsc::sync_channel::<Result<(RecordBatch, bool), DataError>>(1);
                let (out_tx, out_rx) = mpsc::sync_channel::<Result<(Vec<u8>, usize), DataError>>(1);
                scope.spawn(move || {
                    for item in in_rx {
                        let encoded = item.and_then(|(b, header)| {
                            encode_text(&b, format, header).map(|bytes| (bytes, b.num_rows()))
                        });
                        if out_tx.send(encoded).is_err() {
                            return;
                        }
                    }
                });
                inputs.push(in_tx);
                outputs.push(out_rx);
            }
            scope.spawn(move || {
                // Zero-copy slices keep each encoded buffer to a couple of MB.
                let mut i = 0;
                for item in rx {
                    let pieces: Vec<Result<RecordBatch, DataError>> = match item {
                        Ok(b) => (0..b.num_rows().max(1))
                            .step_by(ENCODE_ROWS)
                            .map(|off| Ok(b.slice(off, ENCODE_ROWS.min(b.num_rows() - off))))
                            .collect(),
                        Err(e) => vec![Err(e)],
                    };
                    for piece in pieces {
                        if inputs[i % encoders]
                            .send(piece.map(|b| (b, i == 0)))
                            .is_err()
                        {
                            return;
                        }
                        i += 1;
                    }
                }
            });
            let mut next = 0;
            while let Ok(item) = outputs[next].recv() {
                next = (next + 1) % encoders;
                if cancelled() {
                    return Err(DataError::Cancelled);
                }
                let (bytes, n) = item?;
                text.write_encoded(&bytes, n)?;
                wrote_any = true;
                rows += n as u64;
                report(&src_progress, rows, &mut last_reported, progress);
            }
            return Ok(());
        }
        for item in rx.iter() {
            if cancelled() {
                return Err(DataError::Cancelled);
            }
            let batch = item?;
            sink.write(&batch)?;
            wrote_any = true;
            rows += batch.num_rows() as u64;
            report(&src_progress, rows, &mut last_reported, progress);
        }
        Ok(())
    });
    result?;
    if cancelled() {
        return Err(DataError::Cancelled);
    }
    if !wrote_any {
        // Header-only outputs still carry the header / schema.
        sink.write(&RecordBatch::new_empty(schema.clone()))?;
    }
    sink.finish()?.commit()?;
    progress(ConvertProgress {
        fraction: 1.0,
        rows,
        position: src_progress.total(),
        total: src_progress.total(),
    });
    Ok(ConvertSummary {
        rows,
        columns: schema.fields().iter().map(|f| f.name().clone()).collect(),
    })
}

fn report(
    src: &SourceProgress,
    rows: u64,
    last: &mut f64,
    progress: &mut dyn FnMut(ConvertProgress),
) {
    let fraction = src.fraction();
    // One event per percent at most: callers forward these to Redis.
    if fraction - *last >= 0.01 {
        *last = fraction;
        progress(ConvertProgress {
            fraction,
            rows,
            position: src.position(),
            total: src.total(),
        });
    }
}

fn read_all(
    source: &mut Source,
    pipeline: &mut Pipeline,
    tx: &mpsc::SyncSender<Result<RecordBatch, DataError>>,
) {
    let send_all = |batches: Result<Vec<RecordBatch>, DataError>| -> bool {
        match batches {
            Ok(bs) => bs.into_iter().all(|b| tx.send(Ok(b)).is_ok()),
            Err(e) => {
                let _ = tx.send(Err(e));
                false
            }
        }
    };
    loop {
        match source.next_batch() {
            Ok(Some(batch)) => {
                if !send_all(pipeline.push(batch)) {
                    return;
                }
            }
            Ok(None) => {
                send_all(pipeline.finish());
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        }
    }
}

/// Reads every canonical batch of a file through `visit` (for analysis and row counts), polling
/// `cancelled` between batches.
pub fn scan_file(
    input: &Path,
    input_name: &str,
    input_format: Format,
    batch_size: usize,
    visit: &mut dyn FnMut(&RecordBatch, &SourceProgress) -> Result<(), DataError>,
    cancelled: &dyn Fn() -> bool,
) -> Result<Vec<&'static str>, DataError> {
    let mut source = Source::open(input, input_name, input_format, batch_size, None)?;
    let progress = source.progress();
    while let Some(batch) = source.next_batch()? {
        if cancelled() {
            return Err(DataError::Cancelled);
        }
        visit(&batch, &progress)?;
    }
    Ok(source.present_columns())
}
