//! The conversion benchmark: our converter against pyarrow and polars on the same generated file.
//!
//! Run (release build only): `cargo run --release -p redline -- bench convert`. It generates a 5,000,000-row OHLCV CSV (fixed seed,
//! about 300 MB) under `--dir`, warms the page cache, creates a Python venv with pyarrow and
//! polars under `--venv`, then runs each conversion as a separate process `--runs` times,
//! measuring whole-process wall time and peak RSS (each process reports its own VmHWM /
//! `ru_maxrss` at exit). Our Parquet output is read back and checked against the generator's row
//! count, sums and timestamp range.

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use arrow::array::AsArray;
use arrow::datatypes::Float64Type;

use redline_convert::format::Format;
use redline_convert::read::Source;
use redline_convert::schema::timestamp_array;

/// The memory bound of a streaming conversion, whatever the input size.
const PEAK_RSS_BOUND_MB: f64 = 128.0;

/// Arguments of the benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Rows in the generated CSV.
    #[arg(long, default_value_t = 5_000_000)]
    pub rows: u64,
    /// Working directory for the input and outputs.
    #[arg(long, default_value = "/var/tmp/redline-bench")]
    pub dir: PathBuf,
    /// Python venv holding pyarrow and polars (created if missing).
    #[arg(long, default_value = "/var/tmp/redline-bench-venv")]
    pub venv: PathBuf,
    /// Runs per case; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Skip the pyarrow and polars references.
    #[arg(long)]
    pub no_python: bool,
    /// The command that converts (`<cmd...> IN OUT --overwrite`); defaults to the `redline`
    /// binary's `convert` command.
    #[arg(long, num_args = 1.., allow_hyphen_values = true)]
    pub convert_cmd: Option<Vec<String>>,
}

/// Checks of a generated or converted dataset.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Checks {
    rows: u64,
    close_sum: f64,
    vol_sum: f64,
    ts_min: i64,
    ts_max: i64,
}

impl Checks {
    fn matches(&self, other: &Checks) -> bool {
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(1.0);
        self.rows == other.rows
            && close(self.close_sum, other.close_sum)
            && close(self.vol_sum, other.vol_sum)
            && self.ts_min == other.ts_min
            && self.ts_max == other.ts_max
    }
}

/// One measured process.
#[derive(Debug, Clone, Copy)]
struct Measure {
    wall: f64,
    rss_mb: f64,
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Writes the benchmark input (ticker, ISO timestamp, open, high, low, close, vol) and returns
/// its checks.
fn generate(path: &Path, rows: u64) -> anyhow::Result<Checks> {
    const TICKERS: [&str; 10] = [
        "AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "META", "TSLA", "JPM", "V", "XOM",
    ];
    let tmp = path.with_extension("csv.tmp");
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
    writeln!(w, "ticker,timestamp,open,high,low,close,vol")?;
    let mut rng = 42u64;
    let mut price = [10_000i64; 10];
    let base = chrono::NaiveDate::from_ymd_opt(2020, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .context("base date")?;
    let mut checks = Checks {
        rows,
        close_sum: 0.0,
        vol_sum: 0.0,
        ts_min: i64::MAX,
        ts_max: i64::MIN,
    };
    let cents = |c: i64| format!("{}.{:02}", c / 100, c % 100);
    for i in 0..rows {
        let t = (i % 10) as usize;
        let ts = base + chrono::Duration::minutes(i64::try_from(i / 10)?);
        let r = splitmix64(&mut rng);
        let step = i64::try_from(r % 41)? - 20;
        let open = price[t];
        let close = (open + step).max(100);
        let high = open.max(close) + i64::try_from((r >> 8) % 15)?;
        let low = (open.min(close) - i64::try_from((r >> 16) % 15)?).max(1);
        let vol = (r >> 24) % 1_000_000;
        price[t] = close;
        writeln!(
            w,
            "{},{},{},{},{},{},{}",
            TICKERS[t],
            ts.format("%Y-%m-%dT%H:%M:%S"),
            cents(open),
            cents(high),
            cents(low),
            cents(close),
            vol
        )?;
        #[allow(clippy::cast_precision_loss)]
        {
            checks.close_sum += close as f64 / 100.0;
            checks.vol_sum += vol as f64;
        }
        let micros = ts.and_utc().timestamp_micros();
        checks.ts_min = checks.ts_min.min(micros);
        checks.ts_max = checks.ts_max.max(micros);
    }
    w.flush()?;
    drop(w);
    std::fs::rename(&tmp, path)?;
    Ok(checks)
}

/// Reads a file back with our reader and computes its checks.
fn check_file(path: &Path, format: Format) -> anyhow::Result<Checks> {
    let mut source = Source::open(
        path,
        &path.display().to_string(),
        format,
        redline_convert::read::DEFAULT_BATCH_SIZE,
        None,
    )?;
    let mut c = Checks {
        rows: 0,
        close_sum: 0.0,
        vol_sum: 0.0,
        ts_min: i64::MAX,
        ts_max: i64::MIN,
    };
    while let Some(b) = source.next_batch()? {
        c.rows += b.num_rows() as u64;
        let close = b.column(5).as_primitive::<Float64Type>();
        let vol = b.column(6).as_primitive::<Float64Type>();
        c.close_sum += close.iter().flatten().sum::<f64>();
        c.vol_sum += vol.iter().flatten().sum::<f64>();
        if let Some(ts) = timestamp_array(&b) {
            for t in ts.iter().flatten() {
                c.ts_min = c.ts_min.min(t);
                c.ts_max = c.ts_max.max(t);
            }
        }
    }
    Ok(c)
}

fn run_measured(program: &str, args: &[String]) -> anyhow::Result<Measure> {
    let started = Instant::now();
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {program}"))?;
    let wall = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("{program} {args:?} failed: {stderr}");
    }
    let kb: f64 = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("peak_rss_kb="))
        .next_back()
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("{program} did not report its peak RSS: {stderr}"))?;
    Ok(Measure {
        wall,
        rss_mb: kb / 1024.0,
    })
}

fn median(v: Vec<f64>) -> f64 {
    redline_testkit::median(v).unwrap_or(f64::NAN)
}

const PYARROW_SCRIPT: &str = r#"import resource, sys
import pyarrow.csv as csv, pyarrow.parquet as pq
pq.write_table(csv.read_csv(sys.argv[1]), sys.argv[2])
print(f"peak_rss_kb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
"#;

const POLARS_SCRIPT: &str = r#"import resource, sys
import polars as pl
pl.scan_csv(sys.argv[1]).sink_parquet(sys.argv[2])
print(f"peak_rss_kb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
"#;

fn ensure_venv(venv: &Path) -> anyhow::Result<PathBuf> {
    let python = venv.join("bin/python");
    if !python.exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(venv)
            .status()
            .context("python3 -m venv")?
            .success();
        if !ok {
            bail!("could not create the venv at {}", venv.display());
        }
    }
    let have = Command::new(&python)
        .args(["-c", "import pyarrow, polars"])
        .stderr(Stdio::null())
        .status()?
        .success();
    if !have {
        let ok = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "pyarrow", "polars"])
            .status()
            .context("pip install")?
            .success();
        if !ok {
            bail!("pip install pyarrow polars failed");
        }
    }
    Ok(python)
}

/// Runs the benchmark and prints a table of medians; `redline` is the binary whose `convert` command is
/// measured unless `--convert-cmd` names another.
pub fn run(args: BenchArgs, redline: &Path) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        bail!("the benchmark measures release builds only: rerun with cargo run --release");
    }
    std::fs::create_dir_all(&args.dir)?;
    let input = args.dir.join(format!("ohlcv_{}.csv", args.rows));
    let checks_path = input.with_extension("checks");
    let expected = match std::fs::read_to_string(&checks_path)
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
    {
        Some(v) if input.exists() => Checks {
            rows: v["rows"].as_u64().unwrap_or(0),
            close_sum: v["close_sum"].as_f64().unwrap_or(f64::NAN),
            vol_sum: v["vol_sum"].as_f64().unwrap_or(f64::NAN),
            ts_min: v["ts_min"].as_i64().unwrap_or(0),
            ts_max: v["ts_max"].as_i64().unwrap_or(0),
        },
        _ => {
            eprintln!("generating {} rows into {}", args.rows, input.display());
            let c = generate(&input, args.rows)?;
            std::fs::write(
                &checks_path,
                serde_json::json!({"rows": c.rows, "close_sum": c.close_sum, "vol_sum": c.vol_sum,
                                   "ts_min": c.ts_min, "ts_max": c.ts_max})
                .to_string(),
            )?;
            c
        }
    };
    let size_mb = std::fs::metadata(&input)?.len() as f64 / 1e6;
    // Warm the page cache so every process reads from memory.
    let mut sink = vec![0u8; 1 << 20];
    let mut f = std::fs::File::open(&input)?;
    while f.read(&mut sink)? > 0 {}

    let cmd = match &args.convert_cmd {
        Some(c) if !c.is_empty() => c.clone(),
        _ => vec![redline.display().to_string(), "convert".to_owned()],
    };
    let ours = |inp: &Path, out: &Path| -> anyhow::Result<Measure> {
        let mut a: Vec<String> = cmd[1..].to_vec();
        a.extend([
            inp.display().to_string(),
            out.display().to_string(),
            "--overwrite".to_owned(),
            "--quiet".to_owned(),
            "--report-peak-rss".to_owned(),
        ]);
        run_measured(&cmd[0], &a)
    };

    let python = if args.no_python {
        None
    } else {
        Some(ensure_venv(&args.venv)?)
    };
    let pa_script = args.dir.join("bench_pyarrow.py");
    let pl_script = args.dir.join("bench_polars.py");
    std::fs::write(&pa_script, PYARROW_SCRIPT)?;
    std::fs::write(&pl_script, POLARS_SCRIPT)?;

    let parquet = args.dir.join("ours.parquet");
    let mut results: Vec<(&str, Vec<Measure>)> = vec![
        ("redline csv -> parquet", Vec::new()),
        ("pyarrow csv -> parquet", Vec::new()),
        ("polars csv -> parquet", Vec::new()),
        ("redline parquet -> csv", Vec::new()),
        ("redline csv -> arrow", Vec::new()),
        ("redline csv -> json", Vec::new()),
    ];
    for run in 0..args.runs.max(1) {
        eprintln!("run {}/{}", run + 1, args.runs.max(1));
        results[0].1.push(ours(&input, &parquet)?);
        if let Some(py) = &python {
            let py = py.display().to_string();
            for (slot, script, out) in [
                (1, &pa_script, "pyarrow.parquet"),
                (2, &pl_script, "polars.parquet"),
            ] {
                let a = vec![
                    script.display().to_string(),
                    input.display().to_string(),
                    args.dir.join(out).display().to_string(),
                ];
                results[slot].1.push(run_measured(&py, &a)?);
            }
        }
        results[3]
            .1
            .push(ours(&parquet, &args.dir.join("ours.csv"))?);
        results[4]
            .1
            .push(ours(&input, &args.dir.join("ours.arrow"))?);
        results[5]
            .1
            .push(ours(&input, &args.dir.join("ours.json"))?);
    }

    let got = check_file(&parquet, Format::Parquet)?;
    let verified = got.matches(&expected);
    let reference = results[1..=2]
        .iter()
        .filter(|(_, m)| !m.is_empty())
        .map(|(_, m)| median(m.iter().map(|x| x.wall).collect()))
        .fold(f64::INFINITY, f64::min);
    println!(
        "input: {} ({} rows, {size_mb:.0} MB), {} runs, medians",
        input.display(),
        expected.rows,
        args.runs.max(1)
    );
    println!(
        "{:<26} {:>9} {:>13} {:>14}",
        "case", "wall (s)", "peak RSS (MB)", "vs best ref"
    );
    for (name, m) in &results {
        if m.is_empty() {
            continue;
        }
        let wall = median(m.iter().map(|x| x.wall).collect());
        let rss = median(m.iter().map(|x| x.rss_mb).collect());
        let ratio = if reference.is_finite()
            && name.contains("parquet")
            && !name.starts_with("redline parquet")
        {
            format!("{:.2}x", wall / reference)
        } else {
            "-".to_owned()
        };
        println!("{name:<26} {wall:>9.2} {rss:>13.0} {ratio:>14}");
    }
    let ours_wall = median(results[0].1.iter().map(|x| x.wall).collect());
    let ours_rss = median(results[0].1.iter().map(|x| x.rss_mb).collect());
    if reference.is_finite() {
        println!(
            "csv -> parquet wall time vs the faster reference: {:.2}x ({})",
            ours_wall / reference,
            if ours_wall <= reference {
                "ok"
            } else {
                "SLOWER"
            }
        );
    }
    println!(
        "csv -> parquet peak RSS {ours_rss:.0} MB (bound {PEAK_RSS_BOUND_MB} MB): {}",
        if ours_rss <= PEAK_RSS_BOUND_MB {
            "ok"
        } else {
            "OVER"
        }
    );
    println!(
        "parquet output check (rows, close/vol sums, timestamp range): {}",
        if verified { "ok" } else { "MISMATCH" }
    );
    if ours_rss > PEAK_RSS_BOUND_MB {
        bail!("peak RSS {ours_rss:.0} MB is over the {PEAK_RSS_BOUND_MB} MB bound");
    }
    if !verified {
        bail!("our parquet output differs from the input: expected {expected:?}, got {got:?}");
    }
    Ok(())
}
