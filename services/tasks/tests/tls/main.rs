//! TaskService over TLS to Redis (`rediss://`), as managed Redis services require: the real binary against a
//! private redis-server with a TLS port and certificates from a private CA made for the test. The CA is
//! trusted through `SSL_CERT_FILE`; without it the same server is refused, so verification is really on.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use redline_proto::tasks::task_service_client::TaskServiceClient;
use redline_proto::tasks::{GetTaskRequest, SubmitTaskRequest, TaskState};
use redline_testkit::{RedisServer, free_port};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for localhost / 127.0.0.1 signed by it.
fn make_certs(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=redline-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("extensions");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    );
}

/// Starts `redline-tasks` against `redis_url`, trusting `ca` when given.
fn spawn_tasks(redis_url: &str, ca: Option<&Path>) -> (std::process::Child, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_redline-tasks"));
    cmd.args(["--listen", &addr.to_string(), "--redis-url", redis_url])
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(ca) = ca {
        cmd.env("SSL_CERT_FILE", ca);
    }
    (cmd.spawn().expect("redline-tasks starts"), addr)
}

/// Polls readiness (which follows Redis) for up to `within`.
async fn ready_within(addr: SocketAddr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("url")
            .connect()
            .await
        {
            let status = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: "readiness".into(),
                })
                .await
                .map(|r| r.into_inner().status);
            if status.ok() == Some(ServingStatus::Serving as i32) {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn rediss_urls_connect_over_verified_tls() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_certs(dir.path());
    let tls_port = free_port();
    let file = |name: &str| dir.path().join(name).display().to_string();
    let _redis = RedisServer::builder()
        .args(&[
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &file("server.pem"),
            "--tls-key-file",
            &file("server.key"),
            "--tls-ca-cert-file",
            &file("ca.pem"),
            "--tls-auth-clients",
            "no",
        ])
        .start();
    let url = format!("rediss://localhost:{tls_port}/0");

    // Trusted CA: ready, and tasks go through the TLS connection.
    let (mut trusted, addr) = spawn_tasks(&url, Some(&dir.path().join("ca.pem")));
    assert!(
        ready_within(addr, Duration::from_secs(15)).await,
        "TaskService never reached Redis over TLS"
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut client = TaskServiceClient::new(channel);
    let id = client
        .submit_task(SubmitTaskRequest {
            task_name: "redline.noop".into(),
            queue: "tls_only".into(),
            ..Default::default()
        })
        .await
        .expect("submit over TLS")
        .into_inner()
        .task_id;
    let task = client
        .get_task(GetTaskRequest { task_id: id })
        .await
        .expect("read back")
        .into_inner()
        .task
        .expect("task");
    assert_eq!(task.state, TaskState::Queued as i32);

    // Same server, CA not trusted: the handshake is refused and the service never becomes ready.
    let (mut untrusted, addr) = spawn_tasks(&url, None);
    assert!(
        !ready_within(addr, Duration::from_secs(3)).await,
        "an unverified certificate was accepted"
    );
    let _ = trusted.kill();
    let _ = untrusted.kill();
    let _ = trusted.wait();
    let _ = untrusted.wait();
}
