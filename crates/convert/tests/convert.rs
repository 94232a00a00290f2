//! End-to-end tests of the data library on real files in temporary directories.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::array::{ArrayRef, Float64Array, StringArray, TimestampMicrosecondArray};
use arrow::compute::concat_batches;
use arrow::record_batch::RecordBatch;
use redline_catalog::data::{AnalysisArgs, BulkArgs, ConversionArgs, DownloadArgs};
use redline_convert::convert::{ConvertJob, convert_file};
use redline_convert::download::DownloadConfig;
use redline_convert::paths::OutputFile;
use redline_convert::read::Source;
use redline_convert::schema::canonical_schema;
use redline_convert::write::Sink;
use redline_convert::*;
use serde_json::{Value, json};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A canonical batch exercising nulls, fractional and pre-1970 timestamps and awkward floats.
fn sample(rows: usize) -> RecordBatch {
    let tickers: Vec<Option<String>> = (0..rows)
        .map(|i| (i % 17 != 5).then(|| ["AAPL", "MSFT", "BRK.B"][i % 3].to_owned()))
        .collect();
    let ts: Vec<Option<i64>> = (0..rows)
        .map(|i| {
            let i = i64::try_from(i).unwrap_or(0);
            (i % 19 != 7).then_some(
                1_704_187_800_000_000 + i * 60_000_000 + (i % 4) * 123_456
                    - if i == 3 { 1_800_000_000_000_000 } else { 0 },
            )
        })
        .collect();
    let num = |k: u32| -> ArrayRef {
        Arc::new(Float64Array::from(
            (0..rows)
                .map(|i| {
                    let f = f64::from(u32::try_from(i).unwrap_or(0));
                    (!(i + k as usize).is_multiple_of(13))
                        .then_some(f.mul_add(0.1, 0.2).mul_add(f64::from(k), 1.0 / 3.0))
                })
                .collect::<Vec<_>>(),
        ))
    };
    let fmt: Vec<Option<&str>> = (0..rows).map(|i| (i % 2 == 0).then_some("x")).collect();
    RecordBatch::try_new(
        canonical_schema(),
        vec![
            Arc::new(StringArray::from(tickers)),
            Arc::new(TimestampMicrosecondArray::from(ts)),
            num(1),
            num(2),
            num(3),
            num(4),
            num(5),
            num(6),
            Arc::new(StringArray::from(fmt)),
        ],
    )
    .unwrap_or_else(|e| panic!("sample batch: {e}"))
}

fn write_with_sink(batch: &RecordBatch, path: &Path, format: Format) -> TestResult {
    let out = OutputFile::create(path, true, None)?;
    let mut sink = Sink::new(out, format, &batch.schema(), Compression::Snappy)?;
    sink.write(batch)?;
    sink.finish()?.commit()?;
    Ok(())
}

fn read_all(path: &Path, format: Format) -> Result<RecordBatch, Box<dyn std::error::Error>> {
    let mut src = Source::open(path, "test", format, 7, None)?;
    let mut batches = Vec::new();
    while let Some(b) = src.next_batch()? {
        batches.push(b);
    }
    Ok(concat_batches(&canonical_schema(), &batches)?)
}

fn convert(input: &Path, output: &Path, options: &ConvertOptions) -> Result<u64, DataError> {
    let job = ConvertJob {
        input,
        input_name: "input",
        input_format: Format::from_path(input)?,
        output,
        output_format: Format::from_path(output)?,
        default_ticker: None,
    };
    convert_file(&job, options, &mut |_| {}, &|| false).map(|s| s.rows)
}

fn small_batches() -> ConvertOptions {
    ConvertOptions {
        batch_size: 5,
        overwrite: true,
        ..ConvertOptions::default()
    }
}

#[test]
fn every_pair_of_formats_round_trips_values_types_and_timestamps() -> TestResult {
    let dir = tempfile::tempdir()?;
    let original = sample(60);
    for &from in Format::ALL {
        let src = dir.path().join(format!("src.{}", from.extension()));
        write_with_sink(&original, &src, from)?;
        assert_eq!(
            read_all(&src, from)?,
            original,
            "{from:?} written then read"
        );
        for &to in Format::ALL {
            let dst = dir
                .path()
                .join(format!("dst_{}.{}", from.extension(), to.extension()));
            let rows = convert(&src, &dst, &small_batches())?;
            assert_eq!(rows, 60);
            assert_eq!(read_all(&dst, to)?, original, "{from:?} -> {to:?}");
        }
    }
    Ok(())
}

#[test]
fn stooq_text_maps_to_the_canonical_schema() -> TestResult {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("aapl.txt");
    std::fs::write(
        &input,
        "<TICKER>,<PER>,<DATE>,<TIME>,<OPEN>,<HIGH>,<LOW>,<CLOSE>,<VOL>,<OPENINT>\n\
         AAPL.US,D,20240102,000000,187.15,188.44,183.885,185.64,82488674,0\n\
         AAPL.US,5,20240103,93500,184.22,185.88,183.43,184.25,58414460,0\n",
    )?;
    let out = dir.path().join("aapl.csv");
    convert(&input, &out, &ConvertOptions::default())?;
    let text = std::fs::read_to_string(&out)?;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "ticker,timestamp,open,high,low,close,vol,openint,format"
    );
    assert_eq!(
        lines[1],
        "AAPL.US,2024-01-02 00:00:00,187.15,188.44,183.885,185.64,82488674.0,0.0,stooq_txt"
    );
    assert!(lines[2].starts_with("AAPL.US,2024-01-03 09:35:00,184.22"));
    Ok(())
}

#[test]
fn yahoo_style_headers_and_tab_text_are_normalised() -> TestResult {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("y.txt");
    std::fs::write(
        &input,
        "Date\tOpen\tHigh\tLow\tClose\tAdj Close\tVolume\n2024-01-02\t1\t2\t0.5\t1.5\t1.4\t1000\n",
    )?;
    let b = read_all(&input, Format::Txt)?;
    assert_eq!(b.num_rows(), 1);
    let out = dir.path().join("y.csv");
    convert(&input, &out, &ConvertOptions::default())?;
    assert_eq!(
        std::fs::read_to_string(&out)?.lines().nth(1),
        Some(",2024-01-02 00:00:00,1.0,2.0,0.5,1.5,1000.0,,")
    );
    Ok(())
}

#[test]
fn json_output_is_an_array_of_records_and_txt_output_is_tab_separated() -> TestResult {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("a.csv");
    std::fs::write(
        &input,
        "ticker,timestamp,close\nAAPL,2024-01-02T09:30:00,1.5\nMSFT,1704187860,2\n",
    )?;
    let json_out = dir.path().join("a.json");
    convert(&input, &json_out, &ConvertOptions::default())?;
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json_out)?)?;
    assert_eq!(
        v,
        json!([
            {"ticker":"AAPL","timestamp":"2024-01-02 09:30:00","open":null,"high":null,"low":null,"close":1.5,"vol":null,"openint":null,"format":null},
            {"ticker":"MSFT","timestamp":"2024-01-02 09:31:00","open":null,"high":null,"low":null,"close":2.0,"vol":null,"openint":null,"format":null}
        ])
    );
    let txt_out = dir.path().join("a.txt");
    convert(&input, &txt_out, &ConvertOptions::default())?;
    let text = std::fs::read_to_string(&txt_out)?;
    assert_eq!(
        text.lines().next(),
        Some("ticker\ttimestamp\topen\thigh\tlow\tclose\tvol\topenint\tformat")
    );
    assert_eq!(
        text.lines().nth(1),
        Some("AAPL\t2024-01-02 09:30:00\t\t\t\t1.5\t\t\t")
    );
    Ok(())
}

/// Row, column and message of a malformed-data error.
type Located = (Option<u64>, Option<String>, String);

fn expect_malformed(
    dir: &Path,
    name: &str,
    content: &[u8],
) -> Result<Located, Box<dyn std::error::Error>> {
    let input = dir.join(name);
    std::fs::write(&input, content)?;
    let out = dir.join(format!("{name}.out.parquet"));
    match convert(&input, &out, &small_batches()) {
        Err(DataError::Malformed {
            file,
            row,
            column,
            message,
        }) => {
            assert_eq!(file, "input");
            assert!(!out.exists(), "no output for a failed conversion");
            Ok((row, column, message))
        }
        other => Err(format!("{name}: expected a malformed-data error, got {other:?}").into()),
    }
}

#[test]
fn malformed_inputs_fail_with_file_row_and_column() -> TestResult {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let (row, col, msg) = expect_malformed(
        d,
        "num.csv",
        b"ticker,timestamp,close\nA,2024-01-02,1\nA,2024-01-03,2\nA,2024-01-04,abc\n",
    )?;
    assert_eq!((row, col.as_deref()), (Some(3), Some("close")), "{msg}");
    assert!(msg.contains("abc"));
    // A bad value in a later batch still reports its row in the whole file.
    let mut many = b"ticker,timestamp,close\n".to_vec();
    for i in 0..12 {
        many.extend_from_slice(format!("A,2024-01-02 00:00:{i:02},1\n").as_bytes());
    }
    many.extend_from_slice(b"A,2024-01-02 25:00:00,1\n");
    let (row, col, _) = expect_malformed(d, "ts.csv", &many)?;
    assert_eq!((row, col.as_deref()), (Some(13), Some("timestamp")));
    let (row, _, _) = expect_malformed(
        d,
        "fields.csv",
        b"ticker,timestamp,close\nA,2024-01-02,1\nA,2024-01-03\n",
    )?;
    assert_eq!(row, Some(2));
    expect_malformed(d, "empty.csv", b"")?;
    expect_malformed(d, "nocols.csv", b"foo,bar\n1,2\n")?;
    expect_malformed(d, "binary.csv", b"PAR1\x00\x01\x02\xff\xfe\n\x00")?;
    expect_malformed(d, "notparquet.parquet", b"ticker,timestamp\nA,2024-01-01\n")?;
    expect_malformed(d, "notipc.arrow", b"ticker,timestamp\nA,2024-01-01\n")?;
    expect_malformed(
        d,
        "truncated.json",
        b"[{\"ticker\":\"A\",\"close\":1},{\"ticker\":\"B\",\"clo",
    )?;
    expect_malformed(d, "scalar.json", b"[1,2,3]")?;
    // A parquet file cut short.
    let good = d.join("good.parquet");
    write_with_sink(&sample(50), &good, Format::Parquet)?;
    let bytes = std::fs::read(&good)?;
    expect_malformed(d, "cut.parquet", &bytes[..bytes.len() / 2])?;
    Ok(())
}

#[test]
fn failed_conversion_leaves_no_output_and_no_temporary_files() -> TestResult {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in.csv");
    let mut text = String::from("ticker,timestamp,close\n");
    for i in 0..100 {
        text.push_str(&format!("A,{},{i}\n", 1_700_000_000 + i));
    }
    text.push_str("A,1700000200,oops\n");
    std::fs::write(&input, text)?;
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir)?;
    let out = out_dir.join("o.parquet");
    assert!(convert(&input, &out, &small_batches()).is_err());
    assert_eq!(std::fs::read_dir(&out_dir)?.count(), 0);
    Ok(())
}

#[test]
fn options_dedup_fill_drop_and_select_across_batches() -> TestResult {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in.csv");
    std::fs::write(
        &input,
        "ticker,timestamp,close,vol\nA,2024-01-01,1,\nA,2024-01-01,9,\nA,2024-01-02,,20\nA,2024-01-03,,\nB,2024-01-01,5,50\nA,2024-01-04,4,\nA,2024-01-05,,\n",
    )?;
    let run = |o: ConvertOptions| -> Result<String, Box<dyn std::error::Error>> {
        let out = dir.path().join("out.csv");
        convert(
            &input,
            &out,
            &ConvertOptions {
                batch_size: 2,
                overwrite: true,
                columns: Some(vec!["ticker".into(), "close".into(), "vol".into()]),
                ..o
            },
        )?;
        Ok(std::fs::read_to_string(out)?)
    };
    assert_eq!(
        run(ConvertOptions {
            remove_duplicates: true,
            ..Default::default()
        })?,
        "ticker,close,vol\nA,1.0,\nA,,20.0\nA,,\nB,5.0,50.0\nA,4.0,\nA,,\n"
    );
    assert_eq!(
        run(ConvertOptions {
            handle_missing: HandleMissing::ForwardFill,
            ..Default::default()
        })?,
        "ticker,close,vol\nA,1.0,\nA,9.0,\nA,9.0,20.0\nA,9.0,20.0\nB,5.0,50.0\nA,4.0,50.0\nA,4.0,50.0\n"
    );
    assert_eq!(
        run(ConvertOptions {
            handle_missing: HandleMissing::BackwardFill,
            ..Default::default()
        })?,
        "ticker,close,vol\nA,1.0,20.0\nA,9.0,20.0\nA,5.0,20.0\nA,5.0,50.0\nB,5.0,50.0\nA,4.0,\nA,,\n"
    );
    assert_eq!(
        run(ConvertOptions {
            handle_missing: HandleMissing::Drop,
            ..Default::default()
        })?,
        "ticker,close,vol\nB,5.0,50.0\n"
    );
    let capped = ConvertOptions {
        remove_duplicates: true,
        max_dedup_keys: 3,
        ..Default::default()
    };
    assert!(matches!(run(capped), Err(e) if e.to_string().contains("max_dedup_keys")));
    let capped = ConvertOptions {
        handle_missing: HandleMissing::BackwardFill,
        max_pending_rows: 1,
        ..Default::default()
    };
    assert!(matches!(run(capped), Err(e) if e.to_string().contains("max_pending_rows")));
    Ok(())
}

fn ctx(dir: &Path) -> DataContext {
    DataContext::new(DataRoot::new(dir))
}

/// Task arguments as a client sends them: JSON, deserialized (and so validated) by the catalogue's types.
fn args<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, serde_json::Error> {
    serde_json::from_value(v)
}

fn write_prices(dir: &Path, name: &str, rows: usize) -> std::io::Result<()> {
    let mut s = String::from("ticker,timestamp,open,high,low,close,vol\n");
    for i in 0..rows {
        let c = 100 + i;
        s.push_str(&format!(
            "T,2024-01-01 00:{:02}:{:02},{c},{},{},{c},{}\n",
            i / 60,
            i % 60,
            c + 1,
            c - 1,
            10 * (i + 1)
        ));
    }
    std::fs::write(dir.join(name), s)
}

#[test]
fn conversion_task_reports_progress_and_the_original_result_shape() -> TestResult {
    let dir = tempfile::tempdir()?;
    write_prices(dir.path(), "p.csv", 50)?;
    let mut events = Vec::new();
    let r = process_data_conversion(
        &ctx(dir.path()),
        &args(json!({"input_file": "p.csv", "output_format": "parquet",
                     "output_file": "converted/p.parquet", "options": {"batch_size": 10}}))?,
        &mut |p| events.push(p),
        &|| false,
    )?;
    let r = serde_json::to_value(r)?;
    assert_eq!(r["status"], "success");
    assert_eq!(r["input_file"], "p.csv");
    assert_eq!(r["output_file"], "converted/p.parquet");
    assert_eq!(r["output_format"], "parquet");
    assert_eq!(r["rows_converted"], 50);
    assert_eq!(
        r["columns"],
        json!([
            "ticker",
            "timestamp",
            "open",
            "high",
            "low",
            "close",
            "vol",
            "openint",
            "format"
        ])
    );
    assert!(r["completed_at"].as_str().is_some_and(|s| s.len() >= 19));
    assert!(dir.path().join("converted/p.parquet").exists());
    let steps: Vec<&str> = events.iter().map(|e| e.step.as_str()).collect();
    assert_eq!(steps.first(), Some(&"loading_data"));
    assert_eq!(steps.last(), Some(&"finalizing"));
    assert!(steps.contains(&"converting_data"));
    assert!(
        events.windows(2).all(|w| w[0].progress <= w[1].progress),
        "progress never goes back"
    );
    let conv: Vec<_> = events
        .iter()
        .filter(|e| e.step == "converting_data")
        .collect();
    assert!(conv.iter().any(|e| e.details.get("total_bytes").is_some()));

    // Overwrite protection, then explicit overwrite.
    let again = process_data_conversion(
        &ctx(dir.path()),
        &args(json!({"input_file": "p.csv", "output_format": "parquet",
                     "output_file": "converted/p.parquet"}))?,
        &mut |_| {},
        &|| false,
    );
    assert!(matches!(again, Err(DataError::AlreadyExists(_))));
    process_data_conversion(
        &ctx(dir.path()),
        &args(json!({"input_file": "p.csv", "output_format": "parquet",
                     "output_file": "converted/p.parquet", "options": {"overwrite": true}}))?,
        &mut |_| {},
        &|| false,
    )?;

    // Paths outside the root and DuckDB cannot even be stated as arguments, so nothing is read or written.
    for (i, o) in [
        ("../p.csv", "x.csv"),
        ("/etc/passwd", "x.csv"),
        ("p.csv", "../x.csv"),
        ("p.csv", "/tmp/x.csv"),
    ] {
        let e = args::<ConversionArgs>(
            json!({"input_file": i, "output_format": "csv", "output_file": o}),
        );
        assert!(
            e.as_ref()
                .is_err_and(|e| e.to_string().contains("data directory")),
            "{i} -> {o}: {e:?}"
        );
    }
    let duckdb = args::<ConversionArgs>(
        json!({"input_file": "p.csv", "output_format": "duckdb", "output_file": "p.duckdb"}),
    );
    assert!(duckdb.is_err_and(|e| e.to_string().contains("DuckDB")));
    // The data root refuses escapes again at run time, whatever built the path.
    assert!(matches!(
        ctx(dir.path()).root.resolve_output("../x.csv"),
        Err(DataError::Path(_))
    ));
    assert!(matches!(
        process_data_conversion(
            &ctx(dir.path()),
            &args(
                json!({"input_file": "missing.csv", "output_format": "csv", "output_file": "m.csv"})
            )?,
            &mut |_| {},
            &|| false
        ),
        Err(DataError::NotFound(_))
    ));
    Ok(())
}

#[test]
fn cancellation_stops_between_batches_and_leaves_no_output() -> TestResult {
    let dir = tempfile::tempdir()?;
    write_prices(dir.path(), "p.csv", 200)?;
    let polls = AtomicUsize::new(0);
    let e = process_data_conversion(
        &ctx(dir.path()),
        &args(
            json!({"input_file": "p.csv", "output_format": "json", "output_file": "p.json",
                     "options": {"batch_size": 10}}),
        )?,
        &mut |_| {},
        &|| polls.fetch_add(1, Ordering::Relaxed) >= 3,
    );
    assert!(matches!(e, Err(DataError::Cancelled)));
    assert!(!dir.path().join("p.json").exists());
    Ok(())
}

#[test]
fn analysis_task_computes_statistics_in_one_pass() -> TestResult {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir(dir.path().join("downloaded"))?;
    write_prices(&dir.path().join("downloaded"), "p.csv", 4)?;
    let c = ctx(dir.path());
    let mut events = Vec::new();
    let r = process_data_analysis(
        &c,
        &args(json!({"data_file": "p.csv", "analysis_type": "statistical"}))?,
        &mut |p| events.push(p.step),
        &|| false,
    )?;
    let r = serde_json::to_value(r)?;
    assert_eq!(events.first().map(String::as_str), Some("loading_data"));
    assert_eq!(events.last().map(String::as_str), Some("completed"));
    assert_eq!(r["data_shape"], json!({"rows": 4, "columns": 7}));
    assert_eq!(
        r["columns"],
        json!(["ticker", "timestamp", "open", "high", "low", "close", "vol"])
    );
    let close = &r["result"]["close"];
    assert_eq!(close["count"], 4);
    assert_eq!(close["mean"], 101.5);
    assert_eq!(close["min"], 100.0);
    assert_eq!(close["max"], 103.0);
    assert_eq!(close["25%"], 100.75);
    assert_eq!(close["50%"], 101.5);
    let std = close["std"].as_f64().unwrap_or(0.0);
    assert!((std - 1.290_994_448_735_805_6).abs() < 1e-12);
    let analysis = |kind: &str| -> Result<Value, Box<dyn std::error::Error>> {
        let a = args(json!({"data_file": "p.csv", "analysis_type": kind}))?;
        Ok(serde_json::to_value(process_data_analysis(
            &c,
            &a,
            &mut |_| {},
            &|| false,
        )?)?)
    };
    let f = analysis("financial")?;
    assert_eq!(
        f["result"]["volume_stats"],
        json!({"mean": 25.0, "total": 100.0})
    );
    assert_eq!(f["result"]["close_stats"]["max"], 103.0);
    let k = analysis("correlation")?;
    let r_cv = k["result"]["close"]["vol"].as_f64().unwrap_or(0.0);
    assert!(
        (r_cv - 1.0).abs() < 1e-12,
        "close and vol rise together: {r_cv}"
    );
    assert_eq!(k["result"]["open"]["open"], 1.0);
    assert!(
        args::<AnalysisArgs>(json!({"data_file": "p.csv", "analysis_type": "time_series"}))
            .is_err_and(|e| e.to_string().contains("unknown analysis type"))
    );
    Ok(())
}

#[test]
fn upload_task_converts_or_counts() -> TestResult {
    let dir = tempfile::tempdir()?;
    write_prices(dir.path(), "u.csv", 7)?;
    let c = ctx(dir.path());
    let mut steps = Vec::new();
    let r = process_file_upload(
        &c,
        &args(json!({"file_path": "u.csv", "target_format": "feather"}))?,
        &mut |p| steps.push(p.step),
        &|| false,
    )?;
    let r = serde_json::to_value(r)?;
    assert_eq!(steps, ["loading", "processing", "converted", "completed"]);
    assert_eq!(r["original_file"], "u.csv");
    assert_eq!(r["converted_file"], "u.feather");
    assert_eq!(r["target_format"], "feather");
    assert_eq!(r["rows"], 7);
    assert!(dir.path().join("u.feather").exists());
    let r = process_file_upload(
        &c,
        &args(json!({"file_path": "u.feather"}))?,
        &mut |_| {},
        &|| false,
    )?;
    let r = serde_json::to_value(r)?;
    assert_eq!(r["file_path"], "u.feather");
    assert_eq!(r["rows"], 7);
    Ok(())
}

#[test]
fn bulk_task_runs_every_operation_even_after_a_failure() -> TestResult {
    let dir = tempfile::tempdir()?;
    write_prices(dir.path(), "b.csv", 5)?;
    let ops = json!([
        {"type": "convert", "data": {"input_file": "b.csv", "output_format": "json", "output_file": "b.json"}},
        {"type": "convert", "data": {"input_file": "nope.csv", "output_format": "json", "output_file": "n.json"}},
        {"type": "analyze", "data": {"data_file": "b.csv", "analysis_type": "basic"}},
        {"type": "download", "data": {"ticker": "AAPL", "start_date": "2024-01-01", "end_date": "2024-01-02",
                                     "source": "unconfigured"}}
    ]);
    let mut events = Vec::new();
    let r = process_bulk_operations(
        &ctx(dir.path()),
        &args(json!({"operations": ops}))?,
        &mut |p| events.push(p.to_json()),
        &|| false,
    )?;
    let r = serde_json::to_value(r)?;
    assert_eq!(r["total_operations"], 4);
    assert_eq!(r["successful"], 2);
    assert_eq!(r["failed"], 2);
    assert_eq!(r["results"][0]["status"], "success");
    assert_eq!(r["results"][0]["result"]["rows_converted"], 5);
    assert_eq!(r["results"][1]["status"], "error");
    assert!(
        r["results"][1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("nope.csv"))
    );
    assert_eq!(r["results"][2]["operation"], 3);
    assert_eq!(r["results"][3]["type"], "download");
    assert!(
        r["results"][3]["error"]
            .as_str()
            .is_some_and(|e| e.contains("unsupported source"))
    );
    // An operation of no known kind cannot be stated.
    assert!(args::<BulkArgs>(json!({"operations": [{"type": "frobnicate", "data": {}}]})).is_err());
    assert_eq!(
        events[1],
        json!({"step": "operation_2", "progress": 25.0, "current": 2, "total": 4})
    );
    assert_eq!(
        events[4],
        json!({"step": "completed", "progress": 100.0, "current": 4, "total": 4})
    );
    Ok(())
}

/// A one-thread HTTP server answering each request with the next canned response.
fn serve(
    responses: Vec<(u16, String)>,
) -> Result<(String, std::thread::JoinHandle<Vec<String>>), std::io::Error> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let base = format!("http://{}", listener.local_addr()?);
    let handle = std::thread::spawn(move || {
        let mut paths = Vec::new();
        for (status, body) in responses {
            let Ok((mut stream, _)) = listener.accept() else {
                break;
            };
            let mut reader = BufReader::new(match stream.try_clone() {
                Ok(s) => s,
                Err(_) => break,
            });
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            paths.push(line.split_whitespace().nth(1).unwrap_or("").to_owned());
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).map_or(true, |n| n == 0) || h == "\r\n" {
                    break;
                }
            }
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
        paths
    });
    Ok((base, handle))
}

fn download_ctx(dir: &Path, base: &str) -> DataContext {
    DataContext {
        root: DataRoot::new(dir),
        download: DownloadConfig {
            backoff: std::time::Duration::from_millis(10),
            timeout: std::time::Duration::from_secs(5),
            ..DownloadConfig::single("stooq", base)
        },
        owner: None,
    }
}

const STOOQ_BODY: &str = "Date,Open,High,Low,Close,Volume\n2024-01-02,187.15,188.44,183.885,185.64,82488674\n2024-01-03,184.22,185.88,183.43,184.25,58414460\n";

#[test]
fn download_retries_5xx_and_writes_the_canonical_csv() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (base, server) = serve(vec![(503, "busy".into()), (200, STOOQ_BODY.into())])?;
    let mut steps = Vec::new();
    let r = process_data_download(
        &download_ctx(dir.path(), &base),
        &args(
            json!({"ticker": "AAPL.US", "start_date": "2024-01-01", "end_date": "2024-01-31", "source": "stooq"}),
        )?,
        &mut |p| steps.push(p.step),
        &|| false,
    )?;
    let r = serde_json::to_value(r)?;
    let paths = server.join().map_err(|_| "server thread")?;
    assert_eq!(paths.len(), 2, "one retry after the 503");
    assert_eq!(paths[1], "/q/d/l/?s=aapl.us&d1=20240101&d2=20240131&i=d");
    assert_eq!(
        steps,
        ["initializing", "downloading", "saving", "completed"]
    );
    assert_eq!(r["filename"], "AAPL.US_stooq_2024-01-01_to_2024-01-31.csv");
    assert_eq!(
        r["filepath"],
        "downloaded/AAPL.US_stooq_2024-01-01_to_2024-01-31.csv"
    );
    assert_eq!(r["records"], 2);
    assert_eq!(
        r["date_range"],
        json!({"start": "2024-01-01", "end": "2024-01-31"})
    );
    let text = std::fs::read_to_string(
        dir.path()
            .join("downloaded/AAPL.US_stooq_2024-01-01_to_2024-01-31.csv"),
    )?;
    assert_eq!(
        text,
        "ticker,timestamp,open,high,low,close,vol,openint,format\n\
         AAPL.US,2024-01-02 00:00:00,187.15,188.44,183.885,185.64,82488674.0,,\n\
         AAPL.US,2024-01-03 00:00:00,184.22,185.88,183.43,184.25,58414460.0,,\n"
    );
    let names: Vec<PathBuf> = std::fs::read_dir(dir.path().join("downloaded"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    assert_eq!(names.len(), 1, "no staging files left: {names:?}");
    Ok(())
}

#[test]
fn download_errors_are_classified() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (base, server) = serve(vec![(404, "not found".into())])?;
    let e = process_data_download(
        &download_ctx(dir.path(), &base),
        &args(
            json!({"ticker": "AAPL", "start_date": "2024-01-01", "end_date": "2024-01-31", "source": "stooq"}),
        )?,
        &mut |_| {},
        &|| false,
    );
    assert!(
        matches!(&e, Err(e) if !e.retryable() && e.to_string().contains("404")),
        "{e:?}"
    );
    server.join().map_err(|_| "server")?;

    let (base, server) = serve(vec![(200, "No data".into())])?;
    let e = process_data_download(
        &download_ctx(dir.path(), &base),
        &args(
            json!({"ticker": "AAPL", "start_date": "2024-01-01", "end_date": "2024-01-31", "source": "stooq"}),
        )?,
        &mut |_| {},
        &|| false,
    );
    assert!(
        matches!(&e, Err(DataError::UpstreamRejected(m)) if m.contains("No data")),
        "{e:?}"
    );
    server.join().map_err(|_| "server")?;

    let (base, server) = serve(vec![(
        200,
        "Date,Open,High,Low,Close,Volume\n2024-01-02,1,2,x,1,1\n".into(),
    )])?;
    let e = process_data_download(
        &download_ctx(dir.path(), &base),
        &args(
            json!({"ticker": "AAPL", "start_date": "2024-01-01", "end_date": "2024-01-31", "source": "stooq"}),
        )?,
        &mut |_| {},
        &|| false,
    );
    assert!(
        matches!(&e, Err(DataError::UpstreamRejected(m)) if m.contains("row 1")),
        "{e:?}"
    );
    server.join().map_err(|_| "server")?;

    let (base, server) = serve(vec![
        (500, "a".into()),
        (502, "b".into()),
        (503, "c".into()),
    ])?;
    let e = process_data_download(
        &download_ctx(dir.path(), &base),
        &args(
            json!({"ticker": "AAPL", "start_date": "2024-01-01", "end_date": "2024-01-31", "source": "stooq"}),
        )?,
        &mut |_| {},
        &|| false,
    );
    assert!(matches!(&e, Err(e) if e.retryable()), "{e:?}");
    assert_eq!(
        server.join().map_err(|_| "server")?.len(),
        3,
        "bounded attempts"
    );

    assert!(
        args::<DownloadArgs>(
            json!({"ticker": "../x", "start_date": "2024-01-01", "end_date": "2024-01-31"})
        )
        .is_err_and(|e| e.to_string().contains("invalid ticker"))
    );
    let e = process_data_download(
        &download_ctx(dir.path(), &base),
        &args(json!({"ticker": "AAPL", "start_date": "2024-02-01", "end_date": "2024-01-31"}))?,
        &mut |_| {},
        &|| false,
    );
    assert!(matches!(e, Err(DataError::InvalidInput(m)) if m.contains("after end_date")));
    let e = process_data_download(
        &download_ctx(dir.path(), &base),
        &args(
            json!({"ticker": "AAPL", "start_date": "2024-01-01", "end_date": "2024-01-31", "source": "yahoo"}),
        )?,
        &mut |_| {},
        &|| false,
    );
    assert!(matches!(e, Err(DataError::InvalidInput(_))));
    assert_eq!(std::fs::read_dir(dir.path().join("downloaded"))?.count(), 0);
    Ok(())
}

#[test]
fn empty_inputs_produce_empty_outputs_with_headers() -> TestResult {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("e.csv");
    std::fs::write(&input, "ticker,timestamp,close\n")?;
    let out = dir.path().join("e.json");
    assert_eq!(convert(&input, &out, &ConvertOptions::default())?, 0);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    assert_eq!(v, json!([]));
    let out = dir.path().join("e.txt");
    convert(&input, &out, &ConvertOptions::default())?;
    assert!(std::fs::read_to_string(&out)?.starts_with("ticker\ttimestamp"));
    assert_eq!(std::fs::read_to_string(&out)?.lines().count(), 1);
    Ok(())
}

/// A task delivered again (its worker died after writing, before recording the outcome) may replace the
/// output its earlier attempt wrote; another task still may not, without `overwrite`.
#[test]
fn a_redelivered_task_replaces_its_own_output_and_no_one_elses() -> TestResult {
    let dir = tempfile::tempdir()?;
    write_prices(dir.path(), "p.csv", 20)?;
    let convert = |owner: &str| {
        process_data_conversion(
            &ctx(dir.path()).for_task(owner),
            &args(json!({"input_file": "p.csv", "output_format": "csv",
                         "output_file": "out/p.csv"}))
            .expect("valid arguments"),
            &mut |_| {},
            &|| false,
        )
    };
    convert("task-a")?;
    convert("task-a")?;
    assert!(matches!(
        convert("task-b"),
        Err(DataError::AlreadyExists(_))
    ));
    assert!(dir.path().join("out/p.csv").exists());
    Ok(())
}

/// Cancellation reaches a download waiting out its backoff: the thread comes back at once, not after the
/// retries.
#[test]
fn a_download_notices_cancellation_between_attempts() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (base, _server) = serve(vec![(503, "busy".into()), (503, "busy".into())])?;
    let mut ctx = download_ctx(dir.path(), &base);
    ctx.download.backoff = std::time::Duration::from_secs(30);
    let started = std::time::Instant::now();
    let e = process_data_download(
        &ctx,
        &args(
            json!({"ticker": "AAPL", "start_date": "2024-01-01", "end_date": "2024-01-31", "source": "stooq"}),
        )?,
        &mut |_| {},
        &|| started.elapsed() > std::time::Duration::from_millis(300),
    );
    assert!(matches!(e, Err(DataError::Cancelled)), "{e:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}
