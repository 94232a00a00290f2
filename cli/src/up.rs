//! `redline up`: the whole suite on one machine, each service in its own process.
//!
//! Unless `REDIS_URL` is set, a private `redis-server` is started with AOF persistence and `noeviction`,
//! keeping its data under `./.redline/redis`. The services are this same binary re-executed with
//! `redline serve <service>`, so `cargo run -p redline -- up` needs nothing else built. Ctrl-C (or SIGTERM)
//! stops the services first — workers drain their tasks — then Redis.
//!
//! Every child runs in a process group of its own. A terminal's Ctrl-C signals the whole foreground group;
//! were the children in it, each would get the terminal's SIGINT and then `up`'s SIGTERM, take the second
//! for "exit now" and skip its drain. This way only `up` hears the terminal, and each child gets one signal.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// Flags of `redline up`.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Port of the private redis-server (ignored when REDIS_URL is set).
    #[arg(long, default_value_t = 6399)]
    pub redis_port: u16,
    /// TaskService address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub tasks_listen: String,
    /// RateLimitService address.
    #[arg(long, default_value = "127.0.0.1:50052")]
    pub ratelimit_listen: String,
    /// REST gateway address (REDLINE's /tasks API).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub gateway_listen: String,
    /// First admin port (Prometheus /metrics): TaskService gets it, then RateLimitService, the gateway and each
    /// worker the next ones; 0 turns the admin ports off.
    #[arg(long, default_value_t = 9464)]
    pub metrics_port: u16,
    /// Worker processes to start.
    #[arg(long, default_value_t = 2)]
    pub workers: u16,
    /// Tasks each worker runs at once.
    #[arg(long, default_value_t = 2)]
    pub concurrency: u16,
    /// Directory for Redis data and logs.
    #[arg(long, default_value = ".redline")]
    pub state_dir: PathBuf,
}

struct Proc {
    name: String,
    child: Child,
}

/// Runs the suite until `shutdown`.
pub async fn run(args: UpArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating {}", args.state_dir.display()))?;
    let mut redis = None;
    let redis_url = match std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty()) {
        Some(url) => {
            println!(
                "redis:        {} (from REDIS_URL)",
                redline_runtime::redact_url(&url)
            );
            url
        }
        None => {
            let (child, url) = start_redis(&args).await?;
            println!(
                "redis:        {url} (private, AOF on, data in {})",
                args.state_dir.join("redis").display()
            );
            redis = Some(child);
            url
        }
    };

    let exe = std::env::current_exe().context("locating the redline binary")?;
    // Admin ports in start order; none when --metrics-port is 0.
    let admin = |n: u16| match args.metrics_port {
        0 => None,
        p => Some(format!("127.0.0.1:{}", p.saturating_add(n))),
    };
    let mut procs = Vec::new();
    procs.push(spawn(
        &exe,
        "tasks",
        &[
            "serve",
            "tasks",
            "--listen",
            &args.tasks_listen,
            "--redis-url",
            &redis_url,
        ],
        admin(0),
    )?);
    let rules = write_default_rules(&args.state_dir)?;
    procs.push(spawn(
        &exe,
        "ratelimit",
        &[
            "serve",
            "ratelimit",
            "--listen",
            &args.ratelimit_listen,
            "--redis-url",
            &redis_url,
            "--config",
            &rules,
        ],
        admin(1),
    )?);
    let tasks_url = format!("http://{}", args.tasks_listen);
    let ratelimit_url = format!("http://{}", args.ratelimit_listen);
    procs.push(spawn(
        &exe,
        "gateway",
        &[
            "serve",
            "gateway",
            "--listen",
            &args.gateway_listen,
            "--tasks-url",
            &tasks_url,
            "--ratelimit-url",
            &ratelimit_url,
        ],
        admin(2),
    )?);
    for i in 0..args.workers {
        let id = format!("{}-up-{i}", redline_worker::worker::hostname());
        procs.push(spawn(
            &exe,
            &format!("worker-{i}"),
            &[
                "serve",
                "worker",
                "--redis-url",
                &redis_url,
                "--concurrency",
                &args.concurrency.to_string(),
                "--worker-id",
                &id,
            ],
            admin(3 + i),
        )?);
    }
    println!(
        "TaskService:  grpc://{}  (grpc.health.v1, reflection)",
        args.tasks_listen
    );
    println!(
        "RateLimit:    grpc://{}  (redline.ratelimit.v1 + Envoy RLS v3; rules in {rules})",
        args.ratelimit_listen
    );
    println!(
        "REST:         http://{}/tasks  (REDLINE's API, rate-limited; /healthz, /readyz, /openapi.json)",
        args.gateway_listen
    );
    println!(
        "workers:      {} x concurrency {} on queue redline_tasks",
        args.workers, args.concurrency
    );
    if args.metrics_port != 0 {
        println!(
            "metrics:      http://{}/metrics (TaskService: queue depth and age), then +1 ratelimit, +2 gateway, +3.. workers",
            admin(0).unwrap_or_default()
        );
    }
    println!();
    println!("try:  redline submit redline.echo --kwargs '{{\"hello\": \"world\"}}' --wait");
    println!(
        "      curl -X POST http://{}/tasks/submit -H 'Content-Type: application/json' -d '{{\"task_name\": \"redline.noop\"}}'",
        args.gateway_listen
    );
    println!("stop: Ctrl-C");

    let exited = tokio::select! {
        _ = shutdown.cancelled() => None,
        name = first_exit(&mut procs) => Some(name),
    };
    if let Some(name) = &exited {
        eprintln!("{name} exited; stopping the suite");
    }
    stop_all(&mut procs, Duration::from_secs(40)).await;
    if let Some(mut r) = redis {
        terminate(&mut r, "redis", Duration::from_secs(10)).await;
    }
    println!("stopped");
    match exited {
        Some(name) => bail!("{name} exited unexpectedly"),
        None => Ok(()),
    }
}

async fn start_redis(args: &UpArgs) -> anyhow::Result<(Child, String)> {
    let dir = args.state_dir.join("redis");
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let mut child = Command::new("redis-server")
        .args(["--port", &args.redis_port.to_string(), "--bind", "127.0.0.1"])
        .args(["--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction", "--save", ""])
        .arg("--dir")
        .arg(&dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .stdout(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!(
                    "redis-server is not installed. Install it (Debian/Ubuntu: apt-get install redis-server; \
                     macOS: brew install redis) or point REDIS_URL at a running Redis."
                )
            } else {
                anyhow::anyhow!("starting redis-server: {e}")
            }
        })?;
    let url = format!("redis://127.0.0.1:{}", args.redis_port);
    for _ in 0..100 {
        if let Some(status) = child.try_wait()? {
            bail!(
                "redis-server exited ({status}); is port {} free? see {}",
                args.redis_port,
                dir.join("redis.log").display()
            );
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", args.redis_port))
            .await
            .is_ok()
        {
            return Ok((child, url));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "redis-server did not start listening on port {}",
        args.redis_port
    )
}

/// The rules RateLimitService starts with, unless the file exists already (then it is the operator's).
/// They hold REDLINE's defaults: 200 per day and 50 per hour per client and route.
fn write_default_rules(dir: &std::path::Path) -> anyhow::Result<String> {
    let path = dir.join("ratelimit.yaml");
    if !path.exists() {
        std::fs::write(
            &path,
            "# redline rate-limit rules (envoyproxy/ratelimit format with extensions); edits reload live.\n\
             domain: redline\n\
             descriptors:\n  \
               - key: client\n    \
                 descriptors:\n      \
                   - key: route\n        \
                     limits: \"200 per day; 50 per hour\"\n        \
                     failure_mode: local\n",
        )
        .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(path.display().to_string())
}

fn spawn(exe: &PathBuf, name: &str, args: &[&str], admin: Option<String>) -> anyhow::Result<Proc> {
    let mut command = Command::new(exe);
    command.args(args);
    if let Some(addr) = admin {
        command.args(["--metrics-listen", &addr]);
    }
    let child = command
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(Proc {
        name: name.to_owned(),
        child,
    })
}

async fn first_exit(procs: &mut [Proc]) -> String {
    loop {
        for p in procs.iter_mut() {
            if let Ok(Some(_)) = p.child.try_wait() {
                return p.name.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn stop_all(procs: &mut [Proc], grace: Duration) {
    let waits = procs.iter_mut().map(|p| {
        let name = p.name.clone();
        terminate_named(&mut p.child, name, grace)
    });
    futures::future::join_all(waits).await;
}

async fn terminate_named(child: &mut Child, name: String, grace: Duration) {
    terminate(child, &name, grace).await;
}

/// SIGTERM, then SIGKILL after `grace`.
async fn terminate(child: &mut Child, name: &str, grace: Duration) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        eprintln!("{name} did not stop within {grace:?}; killing it");
        let _ = child.kill().await;
    }
}
