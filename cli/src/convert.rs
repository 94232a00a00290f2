//! `redline convert IN OUT`: the conversion as a local command, without the task queue.
//!
//! Paths are used as given (the operator's own files, not the data root sandbox). A progress bar
//! is drawn when stderr is a terminal.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use redline_convert::convert::{ConvertJob, convert_file};
use redline_convert::format::{Compression, Format, HandleMissing};
use redline_convert::options::ConvertOptions;

/// Arguments of `redline convert`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConvertArgs {
    /// Input file; its format comes from the extension unless --input-format is given.
    pub input: PathBuf,
    /// Output file; its format comes from the extension unless --format is given.
    pub output: PathBuf,
    /// Output format: csv, txt, json, ndjson, parquet, feather or arrow.
    #[arg(long, short = 'f')]
    pub format: Option<String>,
    /// Input format, when the extension does not say.
    #[arg(long)]
    pub input_format: Option<String>,
    /// Replace an existing output.
    #[arg(long)]
    pub overwrite: bool,
    /// Drop rows whose (ticker, timestamp) was already seen (keeps a key set in memory).
    #[arg(long)]
    pub remove_duplicates: bool,
    /// Missing values: none, drop, forward_fill or backward_fill.
    #[arg(long, default_value = "none")]
    pub handle_missing: HandleMissing,
    /// Output columns, comma-separated, in order (canonical names).
    #[arg(long, value_delimiter = ',')]
    pub columns: Option<Vec<String>>,
    /// Parquet compression: snappy, zstd or none.
    #[arg(long, default_value = "snappy")]
    pub compression: Compression,
    /// Rows per batch.
    #[arg(long, default_value_t = redline_convert::read::DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    /// No progress bar or summary.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Print `peak_rss_kb=N` (VmHWM) to stderr at exit, for `redline bench convert`.
    #[arg(long, hide = true)]
    pub report_peak_rss: bool,
}

/// Runs the conversion.
pub fn run(args: ConvertArgs) -> anyhow::Result<()> {
    let input_format = match &args.input_format {
        Some(f) => Format::from_name(f)?,
        None => Format::from_path(&args.input)?,
    };
    let output_format = match &args.format {
        Some(f) => Format::from_name(f)?,
        None => Format::from_path(&args.output)?,
    };
    let options = ConvertOptions {
        overwrite: args.overwrite,
        remove_duplicates: args.remove_duplicates,
        handle_missing: args.handle_missing,
        columns: args.columns.clone(),
        compression: args.compression,
        batch_size: args.batch_size.max(1),
        ..ConvertOptions::default()
    };
    options.output_columns()?;
    let show = !args.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = if show {
        let bar = ProgressBar::new(1000);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {percent:>3}% {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let started = Instant::now();
    let name = args.input.display().to_string();
    let job = ConvertJob {
        input: &args.input,
        input_name: &name,
        input_format,
        output: &args.output,
        output_format,
        default_ticker: None,
    };
    let summary = convert_file(
        &job,
        &options,
        &mut |p| {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            bar.set_position((p.fraction * 1000.0) as u64);
            bar.set_message(format!("{} rows", p.rows));
        },
        &|| false,
    )
    .with_context(|| format!("converting {} to {}", name, args.output.display()))?;
    bar.finish_and_clear();
    if !args.quiet {
        println!(
            "{} -> {} ({}): {} rows, {} columns in {:.2}s",
            name,
            args.output.display(),
            output_format.name(),
            summary.rows,
            summary.columns.len(),
            started.elapsed().as_secs_f64()
        );
    }
    if args.report_peak_rss {
        eprintln!("peak_rss_kb={}", peak_rss_kb().unwrap_or(0));
    }
    Ok(())
}

/// This process's peak resident set size (VmHWM) in KiB, from `/proc/self/status`.
pub fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use redline_convert::read::Source;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: ConvertArgs,
    }

    #[test]
    fn converts_and_refuses_to_clobber() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let input = dir.path().join("c.csv");
        std::fs::write(
            &input,
            "ticker,timestamp,open,high,low,close,vol\n\
             T,2024-01-01 00:00:00,100,101,99,100,10\n\
             T,2024-01-01 00:00:01,101,102,100,101,20\n\
             T,2024-01-01 00:00:02,102,103,101,102,30\n",
        )?;
        let output = dir.path().join("c.parquet");
        let args = |extra: &[&str]| -> Result<ConvertArgs, clap::Error> {
            let mut argv = vec![
                "convert".to_owned(),
                input.display().to_string(),
                output.display().to_string(),
                "-q".to_owned(),
            ];
            argv.extend(extra.iter().map(|s| (*s).to_owned()));
            Wrapper::try_parse_from(argv).map(|w| w.args)
        };
        run(args(&[
            "--columns",
            "ticker,close",
            "--compression",
            "zstd",
        ])?)?;
        let mut source = Source::open(&output, "c.parquet", Format::Parquet, 1024, None)?;
        let batch = source.next_batch()?.expect("one batch");
        assert_eq!(batch.num_rows(), 3);
        assert_eq!(
            batch.column(2).null_count(),
            3,
            "only ticker and close were kept"
        );
        assert!(run(args(&[])?).is_err(), "existing output is kept");
        run(args(&["--overwrite"])?)?;
        assert!(args(&["--handle-missing", "sideways", "--overwrite"]).is_err());
        Ok(())
    }
}
