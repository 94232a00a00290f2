//! Private `redis-server` processes: hermetic, on free ports, killed on drop.
//!
//! The Redis model is the product, so tests run against real servers, and fault tests need servers they own:
//! to kill (a crash), restart (AOF replay), pause with SIGSTOP (a stall: connections stay open, nothing
//! answers), fill (`CONFIG SET maxmemory`), fail over (a replica promoted, the old primary demoted so that
//! it answers `READONLY`) and reconfigure. Each server keeps its files in a
//! temporary directory removed with it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

/// How long a starting server may take to answer PING (an AOF replay included).
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A `redis-server` child process owned by one test.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    args: Vec<String>,
    dir: TempDir,
    child: Option<Child>,
}

/// Options of a [`RedisServer`] before it starts.
#[derive(Debug, Default)]
pub struct RedisServerBuilder {
    args: Vec<String>,
}

impl RedisServerBuilder {
    /// AOF persistence with `appendfsync <policy>` (`always`: every acknowledged write survives a restart;
    /// `everysec`: up to a second may be lost).
    pub fn aof(self, fsync: &str) -> Self {
        self.args(&["--appendonly", "yes", "--appendfsync", fsync])
    }

    /// More `redis-server` arguments, such as `["--maxmemory", "64mb"]`.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// Starts the server and waits until it answers PING.
    ///
    /// # Panics
    /// When `redis-server` is not installed or does not come up.
    pub fn start(self) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("redline-redis-")
            .tempdir()
            .expect("a temporary directory for redis-server");
        let mut server = RedisServer {
            port: crate::free_port(),
            args: self.args,
            dir,
            child: None,
        };
        server.spawn();
        server
    }
}

impl RedisServer {
    /// A server without persistence.
    pub fn start() -> Self {
        Self::builder().start()
    }

    /// A server with AOF and `appendfsync always`.
    pub fn start_persistent() -> Self {
        Self::builder().aof("always").start()
    }

    /// Options before starting.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--maxmemory-policy", "noeviction"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server must be installed to run these tests (apt-get install redis-server)",
            );
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while !ping(self.port) {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's working directory (AOF and RDB files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the process runs (it may be paused).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL, as a crash would: nothing is saved on the way out.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory; AOF data, if any, is replayed before it answers.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Freezes the server with SIGSTOP: connections stay open and nothing answers, like a stalled Redis.
    pub fn pause(&self) {
        self.signal(Signal::SIGSTOP);
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal(Signal::SIGCONT);
    }

    fn signal(&self, signal: Signal) {
        let child = self.child.as_ref().expect("the server is running");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("a pid fits i32"));
        kill(pid, signal).expect("signalling redis-server");
    }

    /// Makes this server a replica of `primary` and waits until it is in sync. Writes sent to it from now
    /// on answer `READONLY`, as an old primary's do after a failover demoted it.
    ///
    /// # Panics
    /// When the replication link does not come up in time.
    pub fn follow(&self, primary: &RedisServer) {
        let port = primary.port.to_string();
        assert_eq!(self.cli(&["REPLICAOF", "127.0.0.1", &port]), "OK");
        let deadline = Instant::now() + START_TIMEOUT;
        while !self
            .cli(&["INFO", "replication"])
            .contains("master_link_status:up")
        {
            assert!(
                Instant::now() < deadline,
                "replica on port {} did not sync",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Promotes a replica to primary (`REPLICAOF NO ONE`), the step a failover takes.
    pub fn promote(&self) {
        assert_eq!(self.cli(&["REPLICAOF", "NO", "ONE"]), "OK");
    }

    /// A planned failover to `replica`, as Sentinel's or an operator's switchover does it: this primary
    /// pauses writes until the replica has every one of them (`FAILOVER`), then the two swap roles. Nothing
    /// acknowledged is lost; writes sent here afterwards answer `READONLY`.
    ///
    /// # Panics
    /// When the roles have not swapped in time.
    pub fn hand_over(&self, replica: &RedisServer) {
        let port = replica.port.to_string();
        // FAILOVER needs the replica connected (it may still be resyncing after a restart of this server).
        let deadline = Instant::now() + START_TIMEOUT;
        while !replica
            .cli(&["INFO", "replication"])
            .contains("master_link_status:up")
        {
            assert!(
                Instant::now() < deadline,
                "replica on port {port} is not connected"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            self.cli(&["FAILOVER", "TO", "127.0.0.1", &port, "TIMEOUT", "5000"]),
            "OK"
        );
        let deadline = Instant::now() + START_TIMEOUT;
        while !(self.cli(&["ROLE"]).starts_with("slave")
            && replica.cli(&["ROLE"]).starts_with("master")
            && self
                .cli(&["INFO", "replication"])
                .contains("master_link_status:up"))
        {
            assert!(
                Instant::now() < deadline,
                "the switchover from port {} to {port} did not complete",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sets `maxmemory` (such as `"1"` to refuse every write with `OOM`, or `"0"` for no limit).
    pub fn set_maxmemory(&self, value: &str) {
        assert_eq!(self.cli(&["CONFIG", "SET", "maxmemory", value]), "OK");
    }

    /// Runs a `redis-cli` command against the server and returns its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // A paused server must be thawed to die cleanly; SIGKILL works either way.
        self.kill();
    }
}

/// Whether a server answers PONG on `port` (a loading server answers `-LOADING` and is not ready yet).
fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// A Redis Cluster of three primaries owned by one test, killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Child>,
    ports: Vec<u16>,
    _dir: TempDir,
}

impl RedisCluster {
    /// Starts three cluster-enabled nodes, joins them with `redis-cli --cluster create`, and waits for
    /// `cluster_state:ok` on every node.
    ///
    /// # Panics
    /// When `redis-server` or `redis-cli` is missing, or the cluster does not form within 20 s.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("redline-cluster-")
            .tempdir()
            .expect("a temporary directory for the cluster");
        // Each node also listens on its port + 10000 (the cluster bus): both must be free.
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 3 {
            let port = crate::free_port();
            let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
            if port < 55_000 && !ports.contains(&port) && free(port + 10_000) {
                ports.push(port);
            }
        }
        let nodes = ports
            .iter()
            .map(|port| {
                Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args([
                        "--cluster-enabled",
                        "yes",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ])
                    .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                    .arg("--dir")
                    .arg(dir.path())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server must be installed to run these tests")
            })
            .collect();
        let cluster = Self {
            nodes,
            ports,
            _dir: dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while !cluster.ports.iter().all(|p| ping(*p)) {
            assert!(Instant::now() < deadline, "cluster nodes did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let addrs: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let mut create = vec!["--cluster", "create"];
        create.extend(addrs.iter().map(String::as_str));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        cli(&create);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cluster
            .ports
            .iter()
            .all(|p| cli(&["-p", &p.to_string(), "cluster", "info"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "the cluster did not form");
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// The nodes' ports.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// A `redis-cluster://` URL naming every node.
    pub fn url(&self) -> String {
        format!(
            "redis-cluster://127.0.0.1:{}?node=127.0.0.1:{}&node=127.0.0.1:{}",
            self.ports[0], self.ports[1], self.ports[2]
        )
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}

fn cli(args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
