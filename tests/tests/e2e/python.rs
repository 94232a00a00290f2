//! TaskService driven from Python: stubs generated from `proto/` with grpcio-tools, then submit, status,
//! watch and cancel against the real server.
//!
//! The interpreter is `$REDLINE_PYTHON` (CI points it at a venv with grpcio and grpcio-tools). Without it the
//! test looks for `python3` with grpc importable; if there is none it says so and passes, unless
//! `REDLINE_REQUIRE_PYTHON=1` (set in CI), where a missing toolchain fails the test.

use std::path::Path;
use std::process::Command;

use redline_testkit::Suite;

fn python() -> Option<String> {
    if let Ok(p) = std::env::var("REDLINE_PYTHON") {
        return Some(p);
    }
    let ok = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| "python3".to_owned())
}

#[tokio::test]
async fn python_grpcio_client_submits_watches_and_cancels() {
    let Some(py) = python() else {
        assert!(
            std::env::var("REDLINE_REQUIRE_PYTHON").is_err(),
            "REDLINE_REQUIRE_PYTHON is set but no python with grpcio and grpcio-tools was found"
        );
        eprintln!("skipped: no python with grpcio + grpcio-tools (set REDLINE_PYTHON)");
        return;
    };
    let suite = Suite::start().await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = root.join("tests/python/taskservice_client.py");
    let proto = root.join("proto");
    let out = tokio::process::Command::new(&py)
        .arg(&script)
        .arg(suite.tasks_addr().to_string())
        .arg(&proto)
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("OK submit status watch cancel"), "{stdout}");
}
