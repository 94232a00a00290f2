//! REDLINE's data tasks through TaskService, a worker and Redis, on real files in a temporary data root.

use std::io::{Read, Write};
use std::time::Duration;

use redline_proto::json;
use redline_proto::tasks::task_service_client::TaskServiceClient;
use redline_proto::tasks::*;
use redline_testkit::Suite;
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

const CSV: &str = "ticker,timestamp,open,high,low,close,vol\n\
    AAPL,2024-01-02 00:00:00,187.15,188.44,183.89,185.64,82488700\n\
    AAPL,2024-01-03 00:00:00,184.22,185.88,183.43,184.25,58414500\n\
    MSFT,2024-01-02 00:00:00,373.86,375.90,366.77,370.87,25258600\n";

struct Data {
    suite: Suite,
    dir: tempfile::TempDir,
    client: TaskServiceClient<Channel>,
}

async fn start(download_url: Option<&str>) -> Data {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("prices.csv"), CSV).expect("write csv");
    let mut suite = Suite::builder().data_dir(dir.path());
    if let Some(url) = download_url {
        suite = suite.worker(&["--download-base-url", url]);
    }
    let suite = suite.start().await;
    let client = suite.tasks();
    Data { suite, dir, client }
}

impl Data {
    async fn submit(&self, name: &str, kwargs: Value) -> Result<String, tonic::Status> {
        self.client
            .clone()
            .submit_task(SubmitTaskRequest {
                task_name: name.into(),
                kwargs: Some(json::to_struct(kwargs.as_object().expect("an object"))),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().task_id)
    }

    /// Watches a task to its end; returns the last record and every progress step seen.
    async fn finish(&self, id: &str) -> (Task, Vec<String>) {
        let mut stream = self
            .client
            .clone()
            .watch_task(WatchTaskRequest { task_id: id.into() })
            .await
            .expect("watch")
            .into_inner();
        let mut steps = Vec::new();
        let mut last = None;
        while let Some(msg) = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("in time")
            .expect("stream")
        {
            let task = msg.task.expect("task");
            if let Some(p) = &task.progress
                && steps.last() != Some(&p.step)
            {
                steps.push(p.step.clone());
            }
            last = Some(task);
        }
        (last.expect("a record"), steps)
    }
}

fn result(t: &Task) -> Value {
    t.result
        .as_ref()
        .map(json::from_value)
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn conversion_runs_through_the_queue_with_progress_and_the_original_result_shape() {
    let d = start(None).await;
    let id = d
        .submit(
            "redline.background.tasks.process_data_conversion",
            json!({"input_file": "prices.csv", "output_format": "parquet", "output_file": "converted/prices.parquet"}),
        )
        .await
        .expect("submit");
    let (task, steps) = d.finish(&id).await;
    assert_eq!(task.status, "SUCCESS", "{}", task.error);
    let r = result(&task);
    assert_eq!(r["status"], "success");
    assert_eq!(r["rows_converted"], 3);
    assert_eq!(r["output_format"], "parquet");
    assert!(
        r["completed_at"].is_string() && r["columns"].is_array(),
        "{r}"
    );
    assert!(d.dir.path().join("converted/prices.parquet").exists());
    assert_eq!(
        steps.first().map(String::as_str),
        Some("loading_data"),
        "{steps:?}"
    );
    assert!(steps.iter().any(|s| s == "finalizing"), "{steps:?}");

    // And back to CSV, then an analysis of the round-tripped file.
    let id = d
        .submit("process_data_conversion", json!({"input_file": "converted/prices.parquet", "output_format": "csv", "output_file": "back.csv"}))
        .await
        .expect("submit");
    assert_eq!(d.finish(&id).await.0.status, "SUCCESS");
    let id = d
        .submit(
            "process_data_analysis",
            json!({"data_file": "back.csv", "analysis_type": "financial"}),
        )
        .await
        .expect("submit");
    let (task, _) = d.finish(&id).await;
    assert_eq!(task.status, "SUCCESS", "{}", task.error);
    let r = result(&task);
    assert_eq!(r["data_shape"]["rows"], 3);
    assert!(
        r["result"]["volume_stats"].is_object(),
        "financial analysis uses vol: {r}"
    );
}

#[tokio::test]
async fn bad_data_task_arguments_are_refused_at_submit_time() {
    let d = start(None).await;
    let cases = [
        (
            json!({"input_file": "/etc/passwd", "output_format": "csv", "output_file": "x.csv"}),
            "kwargs.input_file",
        ),
        (
            json!({"input_file": "../../x.csv", "output_format": "csv", "output_file": "x.csv"}),
            "kwargs.input_file",
        ),
        (
            json!({"input_file": "a.csv", "output_format": "xlsx", "output_file": "x.csv"}),
            "kwargs.output_format",
        ),
    ];
    for (kwargs, field) in cases {
        let err = d
            .submit("process_data_conversion", kwargs)
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument);
        let fields: Vec<String> = err
            .get_details_bad_request()
            .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
            .unwrap_or_default();
        assert_eq!(fields, [field]);
    }
    let err = d
        .submit(
            "process_data_analysis",
            json!({"data_file": "prices.csv", "analysis_type": "time_series"}),
        )
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    // The original's /tasks/analyze sent `parameters`, which its task rejected at run time; here it's refused up front.
    let err = d
        .submit(
            "process_data_analysis",
            json!({"data_file": "prices.csv", "analysis_type": "basic", "parameters": {}}),
        )
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn malformed_data_fails_once_with_file_row_and_column() {
    let d = start(None).await;
    std::fs::write(
        d.dir.path().join("bad.csv"),
        "ticker,timestamp,close\nAAPL,2024-13-45,1.0\n",
    )
    .expect("write");
    let id = d
        .submit(
            "process_data_conversion",
            json!({"input_file": "bad.csv", "output_format": "json", "output_file": "bad.json"}),
        )
        .await
        .expect("submit");
    let (task, _) = d.finish(&id).await;
    assert_eq!(task.status, "FAILURE");
    assert_eq!(task.attempt, 1, "malformed data is not retried");
    assert!(
        task.error.contains("bad.csv") && task.error.contains("timestamp"),
        "{}",
        task.error
    );
    assert!(
        !d.dir.path().join("bad.json").exists(),
        "no half-written output"
    );
}

#[tokio::test]
async fn upload_and_bulk_operations() {
    let d = start(None).await;
    let id = d
        .submit(
            "process_file_upload",
            json!({"file_path": "prices.csv", "target_format": "json"}),
        )
        .await
        .expect("submit");
    let (task, _) = d.finish(&id).await;
    assert_eq!(task.status, "SUCCESS", "{}", task.error);
    assert_eq!(result(&task)["rows"], 3);
    assert!(d.dir.path().join("prices.json").exists());

    let ops = json!([
        {"type": "convert", "data": {"input_file": "prices.csv", "output_format": "feather", "output_file": "p.feather"}},
        {"type": "analyze", "data": {"data_file": "missing.csv", "analysis_type": "basic"}},
        {"type": "analyze", "data": {"data_file": "prices.csv", "analysis_type": "correlation"}},
    ]);
    let id = d
        .submit("process_bulk_operations", json!({"operations": ops}))
        .await
        .expect("submit");
    let (task, steps) = d.finish(&id).await;
    assert_eq!(task.status, "SUCCESS", "{}", task.error);
    let r = result(&task);
    assert_eq!(
        (
            r["total_operations"].clone(),
            r["successful"].clone(),
            r["failed"].clone()
        ),
        (json!(3), json!(2), json!(1)),
        "{r}"
    );
    assert_eq!(r["results"][1]["status"], "error");
    assert!(
        steps.iter().any(|s| s.starts_with("operation_")),
        "{steps:?}"
    );
}

/// A one-shot HTTP server that answers every request with `body` as CSV.
fn serve_csv(body: &'static str) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/csv\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn download_writes_canonical_csv_into_downloaded() {
    let url = serve_csv(
        "Date,Open,High,Low,Close,Volume\n2024-01-02,187.15,188.44,183.89,185.64,82488700\n2024-01-03,184.22,185.88,183.43,184.25,58414500\n",
    );
    let d = start(Some(&url)).await;
    let id = d
        .submit("process_data_download", json!({"ticker": "AAPL", "start_date": "2024-01-01", "end_date": "2024-01-31", "source": "stooq"}))
        .await
        .expect("submit");
    let (task, _) = d.finish(&id).await;
    assert_eq!(task.status, "SUCCESS", "{}", task.error);
    assert_eq!(result(&task)["records"], 2);
    let written = std::fs::read_to_string(
        d.dir
            .path()
            .join("downloaded/AAPL_stooq_2024-01-01_to_2024-01-31.csv"),
    )
    .expect("file");
    assert!(
        written.starts_with("ticker,timestamp,open,high,low,close,vol"),
        "{written}"
    );
    drop(d.suite);
}
