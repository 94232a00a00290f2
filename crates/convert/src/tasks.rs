//! The task functions the worker wraps, one per task type of the original.
//!
//! Each is synchronous (the worker runs it inside `spawn_blocking`), reports progress through a
//! callback, polls `cancelled` between batches, and returns the original's result object. Paths
//! are relative to the [`DataRoot`] in the [`DataContext`].

use std::path::Path;

use serde_json::{Map, Value, json};

use crate::analysis::{AnalysisType, Analyzer};
use crate::convert::{ConvertJob, ConvertProgress, convert_file, scan_file};
use crate::download::{DownloadConfig, check_body, fetch};
use crate::error::DataError;
use crate::format::Format;
use crate::options::ConvertOptions;
use crate::paths::{DataRoot, OutputFile};
use crate::read::Source;
use crate::validate::validate_download;

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

/// What every task needs: the data root and the download sources.
#[derive(Debug, Clone)]
pub struct DataContext {
    /// The directory all task paths resolve in.
    pub root: DataRoot,
    /// Download sources, timeouts and retries.
    pub download: DownloadConfig,
}

impl DataContext {
    /// A context with the default download configuration.
    pub fn new(root: DataRoot) -> Self {
        Self {
            root,
            download: DownloadConfig::default(),
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
    Format::from_path(path)
}

fn pct(fraction: f64, from: f64, to: f64) -> f64 {
    ((to - from).mul_add(fraction, from) * 10.0).round() / 10.0
}

/// `process_data_conversion`: converts `input_file` to `output_file` (both relative to the root).
///
/// `output_format` may be empty, in which case the output extension decides. Progress:
/// `loading_data/10` → `converting_data` (10 to 90 by bytes read, with `rows`, `bytes_read`,
/// `total_bytes`) → `finalizing/90`. Result: `{status:"success", input_file, output_file,
/// output_format, rows_converted, columns, completed_at}`.
pub fn process_data_conversion(
    ctx: &DataContext,
    input_file: &str,
    output_format: &str,
    output_file: &str,
    options: &Value,
    progress: &mut dyn FnMut(Progress),
    cancelled: &dyn Fn() -> bool,
) -> Result<Value, DataError> {
    let opts = ConvertOptions::from_json(options)?;
    let out_format = if output_format.trim().is_empty() {
        Format::from_path(Path::new(output_file))?
    } else {
        Format::from_name(output_format)?
    };
    crate::paths::validate_relative_path(output_file)?;
    progress(Progress::new("loading_data", 10.0).with("input_file", input_file));
    let input = ctx.find_input(input_file)?;
    let output = ctx.root.resolve_output(output_file)?;
    let job = ConvertJob {
        input: &input,
        input_name: input_file,
        input_format: input_format(&input)?,
        output: &output,
        output_format: out_format,
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
    Ok(json!({
        "status": "success",
        "input_file": input_file,
        "output_file": output_file,
        "output_format": out_format.name(),
        "rows_converted": summary.rows,
        "columns": summary.columns,
        "completed_at": now(),
    }))
}

/// `process_data_analysis`: statistics of `data_file` (looked up in `<root>/<f>`, then
/// `<root>/downloaded/<f>`), in one streaming pass.
///
/// Progress: `loading_data/10` → `analyzing` (50, then up to 95 by bytes read) → `completed/100`.
/// Result: `{status, data_file, analysis_type, result, data_shape:{rows,columns}, columns,
/// completed_at}`. Unknown analysis types are refused (the original returned success with an
/// error inside the result).
pub fn process_data_analysis(
    ctx: &DataContext,
    data_file: &str,
    analysis_type: &str,
    options: &Value,
    progress: &mut dyn FnMut(Progress),
    cancelled: &dyn Fn() -> bool,
) -> Result<Value, DataError> {
    let kind = AnalysisType::parse(analysis_type)?;
    let opts = ConvertOptions::from_json(options)?;
    progress(Progress::new("loading_data", 10.0).with("data_file", data_file));
    let path = ctx.find_input(data_file)?;
    let format = input_format(&path)?;
    progress(Progress::new("analyzing", 50.0));
    let mut source = Source::open(&path, data_file, format, opts.batch_size, None)?;
    let present = source.present_columns();
    let src_progress = source.progress();
    let mut analyzer = Analyzer::new(kind, &present);
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
    Ok(json!({
        "status": "success",
        "data_file": data_file,
        "analysis_type": kind.name(),
        "result": result,
        "data_shape": {"rows": rows, "columns": present.len()},
        "columns": present,
        "completed_at": now(),
    }))
}

/// `process_file_upload`: with `target_format`, converts `file_path` to the same name with the
/// new extension; without, counts its rows and columns.
///
/// Progress: `loading/10` → `processing/50` → (`converted/90`) → `completed/100`. Results as the
/// original: `{status, original_file, converted_file, target_format, rows, columns,
/// completed_at}` or `{status, file_path, rows, columns, completed_at}`.
pub fn process_file_upload(
    ctx: &DataContext,
    file_path: &str,
    target_format: Option<&str>,
    options: &Value,
    progress: &mut dyn FnMut(Progress),
    cancelled: &dyn Fn() -> bool,
) -> Result<Value, DataError> {
    let opts = ConvertOptions::from_json(options)?;
    progress(Progress::new("loading", 10.0).with("file_path", file_path));
    let input = ctx.find_input(file_path)?;
    let in_format = input_format(&input)?;
    progress(Progress::new("processing", 50.0));
    match target_format.filter(|t| !t.trim().is_empty()) {
        Some(target) => {
            let out_format = Format::from_name(target)?;
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
            Ok(json!({
                "status": "success",
                "original_file": file_path,
                "converted_file": converted,
                "target_format": out_format.name(),
                "rows": summary.rows,
                "columns": summary.columns,
                "completed_at": now(),
            }))
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
            Ok(json!({
                "status": "success",
                "file_path": file_path,
                "rows": rows,
                "columns": present,
                "completed_at": now(),
            }))
        }
    }
}

/// `process_data_download`: fetches daily OHLCV for `ticker` from `source` and writes
/// `<root>/downloaded/{ticker}_{source}_{start}_to_{end}.csv` in the canonical schema.
///
/// Progress: `initializing/5` → `downloading/30` → `saving/80` → `completed/100`. Result:
/// `{status, ticker, source, filename, filepath, records, columns, date_range:{start,end},
/// completed_at}` (`filepath` relative to the data root). An existing file is kept unless
/// `options.overwrite` is true.
// The arguments mirror the task's kwargs one to one, which keeps the worker's wrapper trivial.
#[allow(clippy::too_many_arguments)]
pub fn process_data_download(
    ctx: &DataContext,
    ticker: &str,
    start_date: &str,
    end_date: &str,
    source: &str,
    options: &Value,
    progress: &mut dyn FnMut(Progress),
    cancelled: &dyn Fn() -> bool,
) -> Result<Value, DataError> {
    validate_download(ticker, start_date, end_date)?;
    let opts = ConvertOptions::from_json(options)?;
    progress(Progress::new("initializing", 5.0).with("ticker", ticker));
    let url = ctx.download.url(source, ticker, start_date, end_date)?;
    let filename = format!("{ticker}_{source}_{start_date}_to_{end_date}.csv");
    let rel = format!("downloaded/{filename}");
    let output = ctx.root.resolve_output(&rel)?;
    if !opts.overwrite && output.exists() {
        return Err(DataError::AlreadyExists(rel));
    }
    progress(Progress::new("downloading", 30.0).with("source", source));
    let body = fetch(&ctx.download, &url)?;
    if cancelled() {
        return Err(DataError::Cancelled);
    }
    check_body(&body, ticker)?;
    progress(Progress::new("saving", 80.0).with("bytes", body.len() as u64));
    // The body goes through the normal CSV reader so upstream data gets the same validation
    // and normalisation as any file; it is staged beside the output and removed afterwards.
    let parent = output
        .parent()
        .ok_or_else(|| DataError::Internal("download output has no parent".to_owned()))?;
    let mut staged = OutputFile::create(&parent.join(format!(".{filename}.download")), true)?;
    std::io::Write::write_all(&mut staged, &body).map_err(|e| DataError::io(parent, e))?;
    let staged_path = parent.join(format!(".{filename}.download"));
    staged.commit()?;
    let job = ConvertJob {
        input: &staged_path,
        input_name: &url,
        input_format: Format::Csv,
        output: &output,
        output_format: Format::Csv,
        default_ticker: Some(ticker.to_owned()),
    };
    let result = convert_file(&job, &opts, &mut |_| {}, cancelled);
    let _ = std::fs::remove_file(&staged_path);
    let summary = result.map_err(|e| match e {
        DataError::Malformed { .. } => {
            DataError::UpstreamRejected(format!("malformed data from {source} for {ticker}: {e}"))
        }
        other => other,
    })?;
    progress(Progress::new("completed", 100.0).with("records", summary.rows));
    Ok(json!({
        "status": "success",
        "ticker": ticker,
        "source": source,
        "filename": filename,
        "filepath": rel,
        "records": summary.rows,
        "columns": summary.columns,
        "date_range": {"start": start_date, "end": end_date},
        "completed_at": now(),
    }))
}

fn str_field<'a>(data: &'a Value, key: &str) -> Result<&'a str, DataError> {
    data.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| DataError::InvalidInput(format!("missing string field '{key}'")))
}

/// Runs one bulk operation (`convert`, `download` or `analyze`).
fn run_operation(
    ctx: &DataContext,
    op: &Value,
    options: &Value,
    cancelled: &dyn Fn() -> bool,
) -> Result<Value, DataError> {
    let kind = op.get("type").and_then(Value::as_str).unwrap_or("");
    let data = op.get("data").unwrap_or(&Value::Null);
    let sink = &mut |_: Progress| {};
    match kind {
        "convert" => process_data_conversion(
            ctx,
            str_field(data, "input_file")?,
            data.get("output_format")
                .and_then(Value::as_str)
                .unwrap_or(""),
            str_field(data, "output_file")?,
            options,
            sink,
            cancelled,
        ),
        "download" => process_data_download(
            ctx,
            str_field(data, "ticker")?,
            str_field(data, "start_date")?,
            str_field(data, "end_date")?,
            data.get("source")
                .and_then(Value::as_str)
                .unwrap_or("stooq"),
            options,
            sink,
            cancelled,
        ),
        "analyze" => process_data_analysis(
            ctx,
            str_field(data, "data_file")?,
            str_field(data, "analysis_type")?,
            options,
            sink,
            cancelled,
        ),
        other => Err(DataError::InvalidInput(format!(
            "unknown operation type '{other}' (expected convert, download or analyze)"
        ))),
    }
}

/// `process_bulk_operations`: runs `operations` (`[{type, data}]`) in order; a failing operation
/// is recorded and the others still run. `options` is passed to every operation.
///
/// Progress: `{step:"operation_N", progress, current, total}` before each, then
/// `{step:"completed", progress:100, current:total, total}`. Result: `{status:"success",
/// total_operations, successful, failed, results:[{operation, type, status, result|error}],
/// completed_at}`.
pub fn process_bulk_operations(
    ctx: &DataContext,
    operations: &Value,
    options: &Value,
    progress: &mut dyn FnMut(Progress),
    cancelled: &dyn Fn() -> bool,
) -> Result<Value, DataError> {
    let ops = operations
        .as_array()
        .ok_or_else(|| DataError::InvalidInput("operations must be a list".to_owned()))?;
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
        let kind = op.get("type").cloned().unwrap_or(Value::Null);
        match run_operation(ctx, op, options, cancelled) {
            Ok(result) => {
                successful += 1;
                results.push(json!({"operation": i + 1, "type": kind, "status": "success", "result": result}));
            }
            Err(DataError::Cancelled) => return Err(DataError::Cancelled),
            Err(e) => {
                results.push(json!({"operation": i + 1, "type": kind, "status": "error", "error": e.to_string()}));
            }
        }
    }
    progress(
        Progress::new("completed", 100.0)
            .with("current", total)
            .with("total", total),
    );
    Ok(json!({
        "status": "success",
        "total_operations": total,
        "successful": successful,
        "failed": total - successful,
        "results": results,
        "completed_at": now(),
    }))
}
