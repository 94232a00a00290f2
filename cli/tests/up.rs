//! `redline up` as an operator runs it from a terminal.

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use redline_proto::tasks::task_service_client::TaskServiceClient;
use redline_proto::tasks::{GetTaskRequest, SubmitTaskRequest};
use redline_testkit::{free_port, raw_get};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// Ctrl-C in a terminal signals the whole foreground process group. `up` alone must hear it: the services
/// then get one SIGTERM each and drain, instead of taking `up`'s forwarded signal for a second Ctrl-C and
/// exiting on the spot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ctrl_c_drains_every_service() {
    let state = tempfile::tempdir().unwrap();
    let gateway = format!("127.0.0.1:{}", free_port());
    let tasks = format!("127.0.0.1:{}", free_port());
    let mut up = Command::new(env!("CARGO_BIN_EXE_redline"))
        .arg("up")
        .args(["--redis-port", &free_port().to_string()])
        .args(["--tasks-listen", &tasks])
        .args(["--ratelimit-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--gateway-listen", &gateway])
        .args(["--metrics-port", "0", "--workers", "1"])
        .arg("--state-dir")
        .arg(state.path())
        .env_remove("REDIS_URL")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own group, as a shell's foreground job has.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .expect("the redline binary");
    let addr = gateway.parse().unwrap();
    redline_testkit::assert_eventually!(
        within = Duration::from_secs(60),
        raw_get(addr, "/readyz", &[])
            .await
            .is_ok_and(|(status, _)| status == 200),
        "the suite came up"
    );
    // A task for the worker to finish while it drains.
    let mut client = TaskServiceClient::connect(format!("http://{tasks}"))
        .await
        .unwrap();
    let id = client
        .submit_task(SubmitTaskRequest {
            task_name: "redline.sleep".into(),
            kwargs: Some(redline_proto::json::to_struct(
                serde_json::json!({"seconds": 2}).as_object().unwrap(),
            )),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .task_id;
    let status_of = |mut c: TaskServiceClient<tonic::transport::Channel>, id: String| async move {
        c.get_task(GetTaskRequest { task_id: id })
            .await
            .map(|r| r.into_inner().task.unwrap_or_default().status)
            .unwrap_or_default()
    };
    redline_testkit::assert_eventually!(
        ["STARTED", "PROGRESS"].contains(&status_of(client.clone(), id.clone()).await.as_str()),
        "the task started"
    );
    let pgid = Pid::from_raw(i32::try_from(up.id().unwrap()).unwrap());
    killpg(pgid, Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), up.wait())
        .await
        .expect("up stopped")
        .unwrap();
    let mut log = String::new();
    up.stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .await
        .unwrap();
    assert!(status.success(), "{status}: {log}");
    assert!(
        !log.contains("second shutdown signal"),
        "a service skipped its drain:\n{log}"
    );
    assert!(log.contains("draining"), "the worker drained:\n{log}");
    drop(client);
}
