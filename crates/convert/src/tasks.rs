//! The task functions the worker wraps, one per data task of the catalogue (`redline_catalog::data`).
//!
//! Each takes the task's typed arguments (already valid: paths relative and inside the root, formats,
//! tickers and dates checked when they were deserialized), is synchronous (the worker runs it inside
//! `spawn_blocking`), reports progress through a callback, polls `cancelled` between batches, and returns
//! the task's typed result, the original's shape. Paths resolve in the [`DataRoot`] of the [`DataContext`].

use std::path::Path;

use redline_catalog::data::{
    AnalysisArgs, AnalysisResult, BulkArgs, BulkOperation, BulkOutcome, BulkResult, ConversionArgs,
    ConversionResult, DataOptions, DataShape, DateRange, DownloadArgs, DownloadResult, Success,
    UploadArgs, UploadResult,
};
use serde_json::{Map, Value, json};

use crate::analysis::Analyzer;
use crate::convert::{ConvertJob, ConvertProgress, convert_file, scan_file};
use crate::download::{DownloadConfig, check_body, fetch};
use crate::error::DataError;
use crate::format::Format;
use crate::options::ConvertOptions;
use crate::paths::{DataRoot, OutputFile};
use crate::read::Source;

/// One progress event, as the original's `PROGRESS` meta: `{step, progress, ...details}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// The step name (`loading_data`, `converting_data`, ...).
    pub step: String,
    /// Percent done, `0.0..=100.0`.
    pub progress: f64,
    /// Extra fields (`rows`, `bytes_read`, `total_bytes`, `current`, `total`...).
    pub details: Map<String, Value>,
}

impl Progress {
    fn new(step: &str, progress: f64) -> Self {
        Self {
            step: step.to_owned(),
            progress,
            details: Map::new(),
        }
    }

    fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// The event as the original's meta object (`{step, progress, ...details}`).
    pub fn to_json(&self) -> Value {
        let mut m = self.details.clone();
        m.insert("step".to_owned(), json!(self.step));
        m.insert("progress".to_owned(), json!(self.progress));
        Value::Object(m)
    }
}

/// What every task needs: the data root and the download sources, and who is writing.
#[derive(Debug, Clone)]
pub struct DataContext {
    /// The directory all task paths resolve in.
    pub root: DataRoot,
    /// Download sources, timeouts and retries.
    pub download: DownloadConfig,
    /// The task this attempt runs (its id), which owns the outputs it writes: a later attempt of the same
    /// task may replace them (see [`OutputFile`]).
    pub owner: Option<String>,
}

impl DataContext {
    /// A context with the default download configuration.
    pub fn new(root: DataRoot) -> Self {
        Self {
            root,
            download: DownloadConfig::default(),
            owner: None,
        }
    }

    /// The same context for one attempt of task `id`.
    pub fn for_task(&self, id: &str) -> Self {
        Self {
            owner: Some(id.to_owned()),
            ..self.clone()
        }
    }

    /// A task's conversion options, with this context's owner.
    fn options(&self, options: Option<&DataOptions>) -> ConvertOptions {
        ConvertOptions {
            owner: self.owner.clone(),
            ..ConvertOptions::from_task(options)
        }
    }

    /// Resolves an input in `<root>/<f>`, then `<root>/downloaded/<f>`.
    fn find_input(&self, rel: &str) -> Result<std::path::PathBuf, DataError> {
        self.root
            .resolve_first(&[rel.to_owned(), format!("downloaded/{rel}")])
    }
}

/// `completed_at`: ISO 8601, naive UTC, as the original.
fn now() -> String {
    chrono::Utc::now()
        .naive_utc()
        .format("%Y-%m-%dT%H:%M:%S%.6f")
        .to_string()
}

fn input_format(path: &Path) -> Result<Format, DataError> {
    Ok(Format::from_path(path)?)
}

fn pct(fraction: f64, from: f64, to: f64) -> f64 {
    ((to - from).mul_add(fraction, from) * 10.0).round() / 10.0
}

/// `process_data_conversion`: converts `input_file` (looked up in the root, then in `downloaded/`) to
/// `output_file`.
///
/// Progress: `loading_data/10` → `converting_data` (10 to 90 by bytes read, with `rows`, `bytes_read`,
/// `total_bytes`) → `finalizing/90`.
pub fn process_data_conversion(
    ctx: &DataContext,
    args: &ConversionArgs,
    progress: &mut dyn FnMut(Progress),
    cancelled: &dyn Fn() -> bool,
) -> Result<ConversionResult, DataError> {
    convert_with(ctx, args, args.options.as_ref(), progress, cancelled)
}

/// A conversion with `options` (a bulk operation's own, or the bulk task's).
fn convert_with(
    ctx: &DataContext,
    args: &ConversionArgs,
    options: Option<&DataOptions>,
    progress: &mut dyn FnMut(Progress),
    cancelled: &dyn Fn() -> bool,
) -> Result<ConversionResult, DataError> {
    let opts = ctx.options(options);
    let (input_file, output_file) = (args.input_file.as_str(), args.output_file.as_str());
    progress(Progress::new("loading_data", 10.0).with("input_file", input_file));
    let input = ctx.find_input(input_file)?;
    let output = ctx.root.resolve_output(output_file)?;
    let job = ConvertJob {
        input: &input,
        input_name: input_file,
        input_format: input_format(&input)?,
        output: &output,
        output_format: args.output_format,
        default_ticker: None,
    };
    let mut on_progress = |p: ConvertProgress| {
        progress(
            Progress::new("converting_data", pct(p.fraction, 10.0, 90.0))
                .with("rows", p.rows)
                .with("bytes_read", p.position)
                .with("total_bytes", p.total),
        );
    };
    let summary = convert_file(&job, &opts, &mut on_progress, cancelled)?;
    progress(Progress::new("finalizing", 90.0).with("rows", summary.rows));
    Ok(ConversionResult {
        status: Success::Success,
        input_file: input_file.to_owned(),
        output_file: output_file.to_owned(),
        output_format: args.output_format,
        rows_converted: summary.rows,
        columns: summary.columns,
        completed_at: now(),
    })
}

/// `process_data_analysis`: statistics of `data_file` (looked up in the root, then in `downloaded/`), in
/// one streaming pass.
///
/// Progress: `loading_data/10` → `analyzing` (50, then up to 95 by bytes read) → `completed/100`.
pub fn process_data_analysis(
    ctx: &DataContext,
    args: &AnalysisArgs,
    progress: &mut dyn FnMut(Progress),
    cancelled: &dyn Fn() -> bool,
) -> Result<AnalysisResult, DataError> {
    analyze_with(ctx, args, args.options.as_ref(), progress, cancelled)
}

fn analyze_with(
    ctx: &DataContext,
    args: &AnalysisArgs,
    options: Option<&DataOptions>,
    progress: &mut dyn FnMut(Progress),
    cancelled: &dyn Fn() -> bool,
) -> Result<AnalysisResult, DataError> {
    let opts = ctx.options(options);
    let data_file = args.data_file.as_str();
    progress(Progress::new("loading_data", 10.0).with("data_file", data_file));
    let path = ctx.find_input(data_file)?;
    let format = input_format(&path)?;
    progress(Progress::new("analyzing", 50.0));
    let mut source = Source::open(&path, data_file, format, opts.batch_size, None)?;
    let present = source.present_columns();
    let src_progress = source.progress();
    let mut analyzer = Analyzer::new(args.analysis_type, &present);
    let mut last = 0.0;
    while let Some(batch) = source.next_batch()? {
        if cancelled() {
            return Err(DataError::Cancelled);
        }
        analyzer.push(&batch);
        let f = src_progress.fraction();
        if f - last >= 0.05 {
            last = f;
            progress(Progress::new("analyzing", pct(f, 50.0, 95.0)).with("rows", analyzer.rows()));
        }
    }
    let rows = analyzer.rows();
    let result = analyzer.finish();
    progress(Progress::new("completed", 100.0).with("rows", rows));
    Ok(AnalysisResult {
        status: Success::Success,
        data_file: data_file.to_owned(),
        analysis_type: args.analysis_type,
        result,
        data_shape: DataShape {
            rows,
            columns: present.len() as u64,
        },
        columns: present.iter().map(|c| (*c).to_owned()).collect(),
        completed_at: now(),
    })
}

/// `process_file_upload`: with `target_format`, converts `file_path` to the same name with the new
/// extension; without, counts its rows and columns.
///
/// Progress: `loading/10` → `processing/50` → (`converted/90`) → `completed/100`.
pub fn process_file_upload(
    ctx: &DataContext,
    args: &UploadArgs,
    progress: &mut dyn FnMut(Progress),
    cancelled: &dyn Fn() -> bool,
) -> Result<UploadResult, DataError> {
    let opts = ctx.options(args.options.as_ref());
    let file_path = args.file_path.as_str();
    progress(Progress::new("loading", 10.0).with("file_path", file_path));
    let input = ctx.find_input(file_path)?;
    let in_format = input_format(&input)?;
    progress(Progress::new("processing", 50.0));
    match args.target_format {
        Some(out_format) => {
            let converted = Path::new(file_path)
                .with_extension(out_format.extension())
                .to_string_lossy()
                .into_owned();
            if converted == file_path {
                return Err(DataError::InvalidInput(format!(
                    "'{file_path}' is already {}",
                    out_format.name()
                )));
            }
            let output = ctx.root.resolve_output(&converted)?;
            let job = ConvertJob {
                input: &input,
                input_name: file_path,
                input_format: in_format,
                output: &output,
                output_format: out_format,
                default_ticker: None,
            };
            let summary = convert_file(&job, &opts, &mut |_| {}, cancelled)?;
            progress(Progress::new("converted", 90.0).with("rows", summary.rows));
            progress(Progress::new("completed", 100.0));
            Ok(UploadResult::Converted {
                status: Success::Success,
                original_file: file_path.to_owned(),
                converted_file: converted,
                target_format: out_format,
                rows: summary.rows,
                columns: summary.columns,
                completed_at: now(),
            })
        }
        None => {
            let mut rows = 0u64;
            let present = scan_file(
                &input,
                file_path,
                in_format,
                opts.batch_size,
                &mut |b, _| {
                    rows += b.num_rows() as u64;
                    Ok(())
                },
                cancelled,
            )?;
            progress(Progress::new("completed", 100.0).with("rows", rows));
            Ok(UploadResult::Counted {
                status: Success::Success,
                file_path: file_path.to_owned(),
                rows,
                columns: present.iter().map(|c| (*c).to_owned()).collect(),
                completed_at: now(),
            })
        }
    }
}

/// `process_data_download`: fetches daily OHLCV for `ticker` from `source` and writes
/// `<root>/downloaded/{ticker}_{source}_{start}_to_{end}.csv` in the canonical schema.
///
/// Progress: `initializing/5` → `downloading/30` → `saving/80` → `completed/100`. An existing file is kept
/// unless `options.overwrite` is true.
pub fn process_data_download(
    ctx: &DataContext,
    args: &DownloadArgs,
    progress: &mut dyn FnMut(Progress),
    cancelled: &dyn Fn() -> bool,
) -> Result<DownloadResult, DataError> {
    download_with(ctx, args, args.options.as_ref(), progress, cancelled)
}

fn download_with(
    ctx: &DataContext,
    args: &DownloadArgs,
    options: Option<&DataOptions>,
    progress: &mut dyn FnMut(Progress),
    cancelled: &dyn Fn() -> bool,
) -> Result<DownloadResult, DataError> {
    let (ticker, source) = (args.ticker.as_str(), args.source());
    let (start_date, end_date) = (args.start_date.as_str(), args.end_date.as_str());
    if args.start_date.date() > args.end_date.date() {
        return Err(DataError::InvalidInput(format!(
            "start_date {start_date} is after end_date {end_date}"
        )));
    }
    let opts = ctx.options(options);
    progress(Progress::new("initializing", 5.0).with("ticker", ticker));
    let url = ctx.download.url(source, ticker, start_date, end_date)?;
    let filename = format!("{ticker}_{source}_{start_date}_to_{end_date}.csv");
    let rel = format!("downloaded/{filename}");
    let output = ctx.root.resolve_output(&rel)?;
    // Fail before fetching anything if the output could not be kept (the conversion checks again).
    if !OutputFile::may_write(&output, opts.overwrite, opts.owner.as_deref()) {
        return Err(DataError::AlreadyExists(rel));
    }
    progress(Progress::new("downloading", 30.0).with("source", source));
    let body = fetch(&ctx.download, &url, cancelled)?;
    if cancelled() {
        return Err(DataError::Cancelled);
    }
    check_body(&body, ticker)?;
    progress(Progress::new("saving", 80.0).with("bytes", body.len() as u64));
    // The body goes through the normal CSV reader so upstream data gets the same validation
    // and normalisation as any file. It is staged beside the output under a name of its own, so two
    // attempts of one download (a redelivery while the first still runs) never share a staging file.
    let parent = output
        .parent()
        .ok_or_else(|| DataError::Internal("download output has no parent".to_owned()))?;
    let mut staged = tempfile::Builder::new()
        .prefix(&format!(".{filename}."))
        .suffix(".download")
        .tempfile_in(parent)
        .map_err(|e| DataError::io(parent, e))?;
    std::io::Write::write_all(&mut staged, &body).map_err(|e| DataError::io(parent, e))?;
    let staged_path = staged.into_temp_path();
    let job = ConvertJob {
        input: &staged_path,
        input_name: &url,
        input_format: Format::Csv,
        output: &output,
        output_format: Format::Csv,
        default_ticker: Some(ticker.to_owned()),
    };
    let result = convert_file(&job, &opts, &mut |_| {}, cancelled);
    drop(staged_path);
    let summary = result.map_err(|e| match e {
        DataError::Malformed { .. } => {
            DataError::UpstreamRejected(format!("malformed data from {source} for {ticker}: {e}"))
        }
        other => other,
    })?;
    progress(Progress::new("completed", 100.0).with("records", summary.rows));
    Ok(DownloadResult {
        status: Success::Success,
        ticker: ticker.to_owned(),
        source: source.to_owned(),
        filename,
        filepath: rel,
        records: summary.rows,
        columns: summary.columns,
        date_range: DateRange {
            start: start_date.to_owned(),
            end: end_date.to_owned(),
        },
        completed_at: now(),
    })
}

/// Runs one bulk operation with its own options, else the bulk task's.
fn run_operation(
    ctx: &DataContext,
    op: &BulkOperation,
    options: Option<&DataOptions>,
    cancelled: &dyn Fn() -> bool,
) -> Result<Value, DataError> {
    let sink = &mut |_: Progress| {};
    let value = match op {
        BulkOperation::Convert(a) => serde_json::to_value(convert_with(
            ctx,
            a,
            a.options.as_ref().or(options),
            sink,
            cancelled,
        )?),
        BulkOperation::Download(a) => serde_json::to_value(download_with(
            ctx,
            a,
            a.options.as_ref().or(options),
            sink,
            cancelled,
        )?),
        BulkOperation::Analyze(a) => serde_json::to_value(analyze_with(
            ctx,
            a,
            a.options.as_ref().or(options),
            sink,
            cancelled,
        )?),
    };
    value.map_err(|e| DataError::Internal(format!("result not serializable: {e}")))
}

/// `process_bulk_operations`: runs `operations` in order; a failing operation is recorded and the others
/// still run. The task's `options` apply to every operation that has none of its own.
///
/// Progress: `{step:"operation_N", progress, current, total}` before each, then `{step:"completed",
/// progress:100, current:total, total}`.
pub fn process_bulk_operations(
    ctx: &DataContext,
    args: &BulkArgs,
    progress: &mut dyn FnMut(Progress),
    cancelled: &dyn Fn() -> bool,
) -> Result<BulkResult, DataError> {
    let ops = &args.operations;
    let total = ops.len();
    let mut results = Vec::with_capacity(total);
    let mut successful = 0;
    for (i, op) in ops.iter().enumerate() {
        if cancelled() {
            return Err(DataError::Cancelled);
        }
        #[allow(clippy::cast_precision_loss)]
        let p = (i * 100 / total.max(1)) as f64;
        progress(
            Progress::new(&format!("operation_{}", i + 1), p)
                .with("current", i + 1)
                .with("total", total),
        );
        let (result, error) = match run_operation(ctx, op, args.options.as_ref(), cancelled) {
            Ok(result) => {
                successful += 1;
                (Some(result), None)
            }
            Err(DataError::Cancelled) => return Err(DataError::Cancelled),
            Err(e) => (None, Some(e.to_string())),
        };
        results.push(BulkOutcome {
            operation: i + 1,
            kind: op.kind().to_owned(),
            status: if error.is_none() { "success" } else { "error" }.to_owned(),
            result,
            error,
        });
    }
    progress(
        Progress::new("completed", 100.0)
            .with("current", total)
            .with("total", total),
    );
    Ok(BulkResult {
        status: Success::Success,
        total_operations: total,
        successful,
        failed: total - successful,
        results,
        completed_at: now(),
    })
}
