//! `redline bench chaos`: a mixed workload under every fault the queue claims to survive, judged by an
//! execution journal.
//!
//! A driver submits journaled tasks (0–1.5 s of work, some up to 8 s) at a steady rate to a pair of Redis
//! servers (primary and replica, both with `appendfsync always`), while worker processes run them. Every
//! process reaches Redis through its own fault proxy. Between quiet spells the driver injects one fault at
//! random: a Redis stall (SIGSTOP, 1–12 s), a Redis restart (1–4 s down), a full Redis (`maxmemory 1`), a
//! failover (the replica promoted, the old primary answering READONLY, the address moved), a partition of
//! one worker (5–20 s), lost replies on one worker's link, a SIGKILLed worker, a rolling restart of one.
//! When the time is up, faults stop, every acknowledged task is given time to finish, and the journal's
//! checker reports lost, stranded, concurrent and twice-finished tasks (all must be 0), and re-runs per
//! fault type (allowed, counted).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redline_runtime::config::parse_duration;
use redline_taskqueue::{DEFAULT_QUEUE, NewTask, TaskState};
use redline_testkit::{FaultProxy, History, Journal, Journaled, RedisServer};
use tokio::process::{Child, Command};

/// Flags of `redline bench chaos`.
#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// How long to inject faults.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub duration: Duration,
    /// Worker processes.
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// Tasks submitted per second.
    #[arg(long, default_value_t = 40)]
    pub rate: u32,
    /// Concurrency of each worker. The default leaves room to spare: tasks average about 1.2 s, so 40/s
    /// needs about 50 slots, and a killed or partitioned worker takes its share away for a while.
    #[arg(long, default_value_t = 48)]
    pub concurrency: usize,
    /// The workers' lease.
    #[arg(long, default_value = "14s", value_parser = parse_duration)]
    pub lease: Duration,
    /// The faults to inject, comma-separated (all of them by default).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub faults: Vec<Fault>,
    /// Seed of the fault schedule (random by default; printed, to replay a run).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// Flags of the worker process the chaos run starts (not for direct use).
#[derive(Debug, Clone, clap::Args)]
pub struct ChaosWorkerArgs {
    /// Redis (the worker's fault proxy).
    #[arg(long)]
    pub redis_url: String,
    /// The execution journal.
    #[arg(long)]
    pub journal: PathBuf,
    /// Worker id.
    #[arg(long)]
    pub worker_id: String,
    /// Lease.
    #[arg(long)]
    pub lease: String,
    /// Concurrency.
    #[arg(long)]
    pub concurrency: String,
}

/// Runs one worker with the journaled task registered, until SIGTERM.
pub async fn worker(args: ChaosWorkerArgs) -> anyhow::Result<()> {
    let flags = [
        "redline-worker",
        "--redis-url",
        &args.redis_url,
        "--worker-id",
        &args.worker_id,
        "--lease",
        &args.lease,
        "--concurrency",
        &args.concurrency,
        "--shutdown-grace",
        "10s",
    ];
    let parsed = <redline_worker::config::Args as clap::Parser>::try_parse_from(flags)?;
    let config = redline_worker::Config::from_args(parsed, &std::collections::HashMap::new())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut registry = redline_worker::registry_for(&config);
    registry.register(Journaled::new(
        Journal::open(&args.journal),
        &args.worker_id,
    ));
    let shutdown = redline_runtime::shutdown_on_signal();
    redline_worker::run(config, registry, shutdown).await?;
    Ok(())
}

/// The faults a chaos run injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Fault {
    /// redis-server frozen with SIGSTOP for 1–12 s.
    RedisStall,
    /// redis-server killed and started again 1–4 s later (AOF `always`).
    RedisRestart,
    /// `maxmemory 1` for 1–4 s: every write answers OOM.
    RedisFull,
    /// A planned switchover to the replica; the old primary answers READONLY until the address moves.
    Failover,
    /// One worker cut off from Redis for 5–20 s.
    Partition,
    /// Replies to one worker dropped for 0.3–1 s, after Redis ran its commands.
    LostReplies,
    /// One worker SIGKILLed and started again.
    WorkerKill,
    /// One worker stopped with SIGTERM (drained) and started again.
    RollingRestart,
}

impl Fault {
    const ALL: [Self; 8] = [
        Self::RedisStall,
        Self::RedisRestart,
        Self::RedisFull,
        Self::Failover,
        Self::Partition,
        Self::LostReplies,
        Self::WorkerKill,
        Self::RollingRestart,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::RedisStall => "redis stall 1-12 s",
            Self::RedisRestart => "redis restart (AOF)",
            Self::RedisFull => "redis full (OOM)",
            Self::Failover => "failover (READONLY)",
            Self::Partition => "worker partition 5-20 s",
            Self::LostReplies => "lost replies",
            Self::WorkerKill => "worker SIGKILL",
            Self::RollingRestart => "worker rolling restart",
        }
    }
}

/// One worker process and its link.
struct WorkerProc {
    proxy: FaultProxy,
    id: String,
    child: Child,
    generation: u32,
}

struct Run {
    redline: PathBuf,
    dir: PathBuf,
    journal: Journal,
    lease: Duration,
    concurrency: usize,
    servers: [RedisServer; 2],
    primary: usize,
    driver: FaultProxy,
    workers: Vec<WorkerProc>,
}

impl Run {
    fn primary(&self) -> &RedisServer {
        &self.servers[self.primary]
    }

    fn primary_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.primary().port()))
    }

    fn spawn_worker(&self, proxy: &FaultProxy, id: &str) -> anyhow::Result<Child> {
        let log = std::fs::File::create(self.dir.join(format!("{id}.log")))?;
        Command::new(&self.redline)
            .args(["bench", "chaos-worker", "--redis-url", &proxy.url()])
            .arg("--journal")
            .arg(self.journal.path())
            .args(["--worker-id", id])
            .args(["--lease", &format!("{}ms", self.lease.as_millis())])
            .args(["--concurrency", &self.concurrency.to_string()])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .context("starting a chaos worker")
    }

    async fn add_worker(&mut self, n: usize) -> anyhow::Result<()> {
        let proxy = FaultProxy::start(self.primary_addr()).await;
        let id = format!("chaos-{n}-0");
        let child = self.spawn_worker(&proxy, &id)?;
        self.workers.push(WorkerProc {
            proxy,
            id,
            child,
            generation: 0,
        });
        Ok(())
    }

    async fn respawn(&mut self, n: usize) -> anyhow::Result<()> {
        let w = &self.workers[n];
        let id = format!("chaos-{n}-{}", w.generation + 1);
        let child = self.spawn_worker(&w.proxy, &id)?;
        let w = &mut self.workers[n];
        w.generation += 1;
        w.id = id;
        w.child = child;
        Ok(())
    }

    /// Applies one fault and waits for it to pass; returns the worker it hit, if it hit only one.
    async fn inject(&mut self, fault: Fault, rng: &mut StdRng) -> anyhow::Result<Option<String>> {
        let n = rng.random_range(0..self.workers.len());
        let target = self.workers[n].id.clone();
        match fault {
            Fault::RedisStall => {
                self.primary().pause();
                tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..12_000))).await;
                self.primary().resume();
            }
            Fault::RedisRestart => {
                let down = Duration::from_millis(rng.random_range(1_000..4_000));
                let p = self.primary;
                self.servers[p].kill();
                tokio::time::sleep(down).await;
                self.servers[p].restart();
            }
            Fault::RedisFull => {
                self.primary().set_maxmemory("1");
                tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..4_000))).await;
                self.primary().set_maxmemory("0");
            }
            Fault::Failover => {
                let old = self.primary;
                let new = 1 - old;
                // A planned switchover: Redis replication is asynchronous, so an unplanned one may drop
                // the writes the replica had not received yet, acknowledged submits included
                // (ARCHITECTURE.md, "Failure handling").
                self.servers[old].hand_over(&self.servers[new]);
                // Clients still reach the old primary, now read-only, until the address moves.
                tokio::time::sleep(Duration::from_millis(rng.random_range(300..2_000))).await;
                self.primary = new;
                let addr = self.primary_addr();
                self.driver.redirect(addr);
                for w in &self.workers {
                    w.proxy.redirect(addr);
                }
            }
            Fault::Partition => {
                let from = Journal::now_us();
                self.workers[n].proxy.partition();
                tokio::time::sleep(Duration::from_millis(rng.random_range(5_000..20_000))).await;
                self.workers[n].proxy.heal();
                self.journal.cut_off(&self.workers[n].id, from);
            }
            Fault::LostReplies => {
                self.workers[n].proxy.lose_replies(true);
                tokio::time::sleep(Duration::from_millis(rng.random_range(300..1_000))).await;
                self.workers[n].proxy.lose_replies(false);
            }
            Fault::WorkerKill => {
                let _ = self.workers[n].child.start_kill();
                let _ = self.workers[n].child.wait().await;
                self.journal.killed(&self.workers[n].id);
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..2_000))).await;
                self.respawn(n).await?;
            }
            Fault::RollingRestart => {
                if let Some(pid) = self.workers[n]
                    .child
                    .id()
                    .and_then(|p| i32::try_from(p).ok())
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
                if tokio::time::timeout(Duration::from_secs(40), self.workers[n].child.wait())
                    .await
                    .is_err()
                {
                    let _ = self.workers[n].child.start_kill();
                    let _ = self.workers[n].child.wait().await;
                    self.journal.killed(&self.workers[n].id);
                }
                self.respawn(n).await?;
            }
        }
        Ok(match fault {
            Fault::Partition | Fault::LostReplies | Fault::WorkerKill | Fault::RollingRestart => {
                Some(target)
            }
            Fault::RedisStall | Fault::RedisRestart | Fault::RedisFull | Fault::Failover => None,
        })
    }
}

/// One injected fault: what, when (wall-clock microseconds, as in the journal), and the worker it hit when
/// it hit only one.
struct Window {
    fault: Fault,
    from: u64,
    to: u64,
    worker: Option<String>,
}

/// Runs the soak and prints its verdict; fails when the history is not clean.
pub async fn run(args: ChaosArgs, redline: PathBuf) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(|| rand::rng().random());
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::Builder::new()
        .prefix("redline-chaos-")
        .tempdir()?;
    println!(
        "chaos: {:?} of faults, {} workers, {} tasks/s, lease {:?}, seed {seed}; logs in {}",
        args.duration,
        args.workers,
        args.rate,
        args.lease,
        dir.path().display()
    );
    let a = RedisServer::builder().aof("always").start();
    let b = RedisServer::builder().aof("always").start();
    b.follow(&a);
    let driver = FaultProxy::to_port(a.port()).await;
    let journal = Journal::open(&dir.path().join("journal.jsonl"));
    let mut run = Run {
        redline,
        dir: dir.path().to_owned(),
        journal: journal.clone(),
        lease: args.lease,
        concurrency: args.concurrency.max(1),
        servers: [a, b],
        primary: 0,
        driver,
        workers: Vec::new(),
    };
    for n in 0..args.workers.max(1) {
        run.add_worker(n).await?;
    }
    let store = redline_testkit::task_store(&run.driver.url(), args.lease).await;

    // The submitter: TaskService's part, straight to the store, at a steady rate.
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let submitter = {
        let (store, acknowledged, refused, stop) = (
            store.clone(),
            Arc::clone(&acknowledged),
            Arc::clone(&refused),
            stop.clone(),
        );
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let period = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            let mut last_settings = Instant::now() - Duration::from_secs(60);
            while !stop.is_cancelled() {
                tick.tick().await;
                if last_settings.elapsed() > Duration::from_secs(5) {
                    let _ = store.publish_settings().await;
                    last_settings = Instant::now();
                }
                let ms: u64 = if rng.random_range(0..10) == 0 {
                    rng.random_range(3_000..8_000)
                } else {
                    rng.random_range(0..1_500)
                };
                // One task in ten fails its first attempt, so retries run under the faults too.
                let fail_attempts = u32::from(rng.random_range(0..10) == 0);
                let mut t = NewTask::new("test.journal", DEFAULT_QUEUE);
                t.kwargs = serde_json::json!({ "ms": ms, "fail_attempts": fail_attempts });
                match store.submit(std::slice::from_ref(&t)).await {
                    Ok(_) => acknowledged
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(t.id),
                    Err(e) => {
                        let kind = if e.is_unavailable() {
                            "unavailable"
                        } else {
                            "other"
                        };
                        *refused
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .entry(kind.to_owned())
                            .or_default() += 1;
                    }
                }
            }
        })
    };

    // The faults, one at a time, with quiet spells between them.
    let faults = if args.faults.is_empty() {
        Fault::ALL.to_vec()
    } else {
        args.faults.clone()
    };
    let started = Instant::now();
    let mut windows: Vec<Window> = Vec::new();
    while started.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_millis(rng.random_range(2_000..6_000))).await;
        let fault = faults[rng.random_range(0..faults.len())];
        let from = Journal::now_us();
        let at = started.elapsed();
        let worker = run.inject(fault, &mut rng).await?;
        let to = Journal::now_us();
        println!(
            "  t+{:>6.1}s  {:<26} {:>5.1} s",
            at.as_secs_f64(),
            fault.name(),
            (to - from) as f64 / 1e6
        );
        windows.push(Window {
            fault,
            from,
            to,
            worker,
        });
    }
    stop.cancel();
    let _ = submitter.await;

    // Let everything acknowledged finish, then judge.
    let acknowledged = acknowledged
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let store = redline_testkit::task_store(&run.driver.url(), args.lease).await;
    let settle = Instant::now();
    loop {
        let mut open = 0;
        for ids in acknowledged.chunks(1000) {
            open += match store.get_many(ids).await {
                Ok(records) => records
                    .iter()
                    .filter(|r| r.as_ref().map(|r| r.state) != Some(TaskState::Succeeded))
                    .count(),
                Err(_) => ids.len(),
            };
        }
        if open == 0 || settle.elapsed() > Duration::from_secs(180) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let verdict = journal.check(&acknowledged, &store).await;
    report(
        &journal.history(),
        &windows,
        acknowledged.len(),
        &refused.lock().unwrap_or_else(PoisonError::into_inner),
    );
    println!(
        "outcomes lost with a killed worker {}, with a partitioned one {}: run again (at-least-once)",
        verdict.outcomes_lost_to_kills, verdict.outcomes_lost_to_partitions
    );
    println!(
        "verdict   lost {}  running without a lease {}  concurrent {}  finished twice {}",
        verdict.lost.len(),
        verdict.running_without_lease.len(),
        verdict.concurrent.len(),
        verdict.finished_twice.len()
    );
    for w in &mut run.workers {
        let _ = w.child.start_kill();
    }
    if verdict.is_clean() {
        Ok(())
    } else {
        let keep = dir.keep();
        anyhow::bail!(
            "the history is not clean (journal and logs kept in {}): {verdict:#?}",
            keep.display()
        )
    }
}

/// Prints injections and re-runs per fault type. A re-run is an execution that follows one which did not
/// end in a deliberate failure (after which the next execution is a retry). It is put down to the fault
/// that interrupted the execution it repeats: the latest one that could reach it (Redis-wide, or aimed at
/// its worker) and was under way between its start and the moment it stopped (its end, its worker's kill,
/// or failing both, the re-run's start).
fn report(
    history: &History,
    windows: &[Window],
    acknowledged: usize,
    refused: &BTreeMap<String, u64>,
) {
    let mut reruns: BTreeMap<Option<Fault>, usize> = BTreeMap::new();
    let mut retries = 0;
    for executions in history.executions.values() {
        for pair in executions.windows(2) {
            let (before, again) = (&pair[0], &pair[1]);
            if before.failed {
                retries += 1;
                continue;
            }
            let stopped = before
                .stop
                .filter(|&at| at <= again.start)
                .unwrap_or(again.start);
            let cause = windows
                .iter()
                .rev()
                .find(|w| {
                    w.from <= stopped
                        && w.to >= before.start
                        && w.worker.as_deref().is_none_or(|hit| hit == before.worker)
                })
                .map(|w| w.fault);
            *reruns.entry(cause).or_default() += 1;
        }
    }
    let executions: usize = history.executions.values().map(Vec::len).sum();
    println!(
        "tasks     {acknowledged} acknowledged, {} refused ({refused:?}), {executions} executions, \
         {retries} retries after a deliberate failure",
        refused.values().sum::<u64>()
    );
    println!("{:<26} {:>10} {:>8}", "fault", "injected", "re-runs");
    for f in Fault::ALL {
        let injected = windows.iter().filter(|w| w.fault == f).count();
        println!(
            "{:<26} {:>10} {:>8}",
            f.name(),
            injected,
            reruns.get(&Some(f)).copied().unwrap_or(0)
        );
    }
    println!(
        "{:<26} {:>10} {:>8}",
        "(no fault nearby)",
        "",
        reruns.get(&None).copied().unwrap_or(0)
    );
}
