//! Peers measured in the same run as redline, with the same definitions and the same kind of private Redis.
//!
//! BullMQ runs from `bench/peers/bullmq.mjs` on Node, with BullMQ installed from npm into a scratch
//! directory on first use. Every figure gets a fresh redis-server of its own (as redline's runs flush
//! theirs), so one figure's keys never weigh on the next. A peer whose runtime is missing is skipped with a
//! note, not failed: the redline figures still stand on their own references.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use redline_testkit::{RedisServer, median};
use tokio::process::Command;

/// The BullMQ version measured; pinned so that figures from different days compare like with like.
const BULLMQ: &str = "bullmq@5.81.5";

/// The driver script, written next to its `node_modules`.
const SCRIPT: &str = include_str!("../peers/bullmq.mjs");

/// Peers `redline bench tasks` can run beside redline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Peer {
    /// BullMQ on Node (needs `node` and `npm`).
    Bullmq,
}

/// BullMQ, installed and ready to run.
#[derive(Debug)]
pub struct Bullmq {
    script: PathBuf,
    appendfsync: Option<String>,
}

impl Bullmq {
    /// Installs BullMQ into `dir` unless it is there already; `None`, with a note printed, when Node or npm
    /// is missing.
    pub async fn prepare(dir: &Path, appendfsync: Option<String>) -> anyhow::Result<Option<Self>> {
        for tool in ["node", "npm"] {
            let found = Command::new(tool)
                .arg("--version")
                .output()
                .await
                .is_ok_and(|o| o.status.success());
            if !found {
                println!("peer       BullMQ skipped: `{tool}` is not installed");
                return Ok(None);
            }
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        if !dir.join("node_modules/bullmq/package.json").exists() {
            println!("peer       installing {BULLMQ} into {}", dir.display());
            let out = Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--prefix"])
                .arg(dir)
                .arg(BULLMQ)
                .output()
                .await?;
            if !out.status.success() {
                bail!(
                    "npm install {BULLMQ} failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        let script = dir.join("bullmq-bench.mjs");
        std::fs::write(&script, SCRIPT)?;
        Ok(Some(Self {
            script,
            appendfsync,
        }))
    }

    /// Runs one mode of the script against a fresh private Redis and returns its JSON line.
    async fn once(&self, mode: &str, args: &[usize]) -> anyhow::Result<serde_json::Value> {
        let redis = match &self.appendfsync {
            Some(fsync) => RedisServer::builder().aof(fsync).start(),
            None => RedisServer::start(),
        };
        let out = Command::new("node")
            .arg(&self.script)
            .arg(mode)
            .arg(redis.port().to_string())
            .args(args.iter().map(ToString::to_string))
            .kill_on_drop(true)
            .output()
            .await?;
        if !out.status.success() {
            bail!(
                "BullMQ {mode} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(line).with_context(|| format!("BullMQ {mode} printed {line:?}"))
    }

    /// The median of `runs` runs of one figure (`field` of the script's output).
    pub async fn figure(
        &self,
        runs: usize,
        mode: &str,
        args: &[usize],
        field: &str,
    ) -> anyhow::Result<f64> {
        let mut values = Vec::new();
        for _ in 0..runs.max(1) {
            let v = self.once(mode, args).await?;
            values.push(
                v[field]
                    .as_f64()
                    .with_context(|| format!("BullMQ {mode}: no {field} in {v}"))?,
            );
        }
        Ok(median(values).unwrap_or(0.0))
    }

    /// The sequential round trip: p50 and p99 in milliseconds.
    pub async fn round_trip(&self, n: usize) -> anyhow::Result<(f64, f64)> {
        let v = self.once("roundtrip", &[n]).await?;
        Ok((
            v["p50_ms"].as_f64().unwrap_or(f64::NAN),
            v["p99_ms"].as_f64().unwrap_or(f64::NAN),
        ))
    }
}

/// Prints a peer's figure under redline's, with redline's ratio to it (above 1 is redline ahead, whether
/// the figure is a rate or a cost).
pub fn line(what: &str, peer: f64, unit: &str, redline: f64, higher_is_better: bool) {
    let ratio = if higher_is_better {
        redline / peer
    } else {
        peer / redline
    };
    let verdict = if ratio >= 1.0 { "ahead" } else { "behind" };
    let digits = if peer < 10.0 { 2 } else { 1 };
    println!("           {what:<50} {peer:>9.digits$} {unit:<8} (redline {ratio:.2}x, {verdict})");
}
