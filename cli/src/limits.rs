//! `redline limits check|inspect|reset`: a thin RateLimitService client for operators and scripts.

use std::time::Duration;

use anyhow::Context;
use redline_proto::redline::ratelimit::v1 as pb;
use redline_proto::redline::ratelimit::v1::rate_limit_service_client::RateLimitServiceClient;
use redline_ratelimit::limits::format_wait;

/// What to address: a domain and descriptor entries, or a plain key, with optional caller limits.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// Rule domain (required with --entry unless --limits is given).
    #[arg(long, default_value = "")]
    pub domain: String,
    /// Descriptor entry `key=value`; repeat for nested entries (one descriptor).
    #[arg(long = "entry", value_parser = parse_entry)]
    pub entries: Vec<(String, String)>,
    /// Plain key instead of entries.
    #[arg(long)]
    pub key: Option<String>,
    /// Caller-supplied limits in Flask-Limiter notation, e.g. "200 per day; 50 per hour".
    #[arg(long)]
    pub limits: Option<String>,
}

/// `redline limits …`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum LimitsCommand {
    /// Decide one request (consumes quota unless --dry-run).
    Check {
        /// What to check.
        #[command(flatten)]
        target: TargetArgs,
        /// Units to consume.
        #[arg(long, default_value_t = 1)]
        cost: u64,
        /// Report without consuming.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show current counters without consuming.
    Inspect {
        /// What to inspect.
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Forget the counters (e.g. after a successful login).
    Reset {
        /// What to reset.
        #[command(flatten)]
        target: TargetArgs,
    },
}

fn parse_entry(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

struct Addressed {
    domain: String,
    descriptors: Vec<pb::Descriptor>,
    key: String,
    expression: String,
}

fn address(t: TargetArgs) -> Addressed {
    let expression = t.limits.unwrap_or_default();
    let mut descriptors = Vec::new();
    if !t.entries.is_empty() {
        descriptors.push(pb::Descriptor {
            entries: t
                .entries
                .into_iter()
                .map(|(key, value)| pb::Entry { key, value })
                .collect(),
            limits: Vec::new(),
            // With entries, caller limits belong to that descriptor.
            limit_expression: if t.key.is_none() {
                expression.clone()
            } else {
                String::new()
            },
        });
    }
    Addressed {
        domain: t.domain,
        descriptors,
        expression: if t.key.is_some() {
            expression
        } else {
            String::new()
        },
        key: t.key.unwrap_or_default(),
    }
}

fn duration_text(d: Option<prost_types::Duration>) -> String {
    let ms = d
        .and_then(|d| Duration::try_from(d).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    if ms == 0 {
        "0s".to_owned()
    } else {
        format_wait(ms)
    }
}

fn print_limits(limits: &[pb::LimitStatus]) {
    for l in limits {
        let algorithm = l
            .algorithm()
            .as_str_name()
            .trim_start_matches("ALGORITHM_")
            .to_ascii_lowercase();
        let source = l
            .source()
            .as_str_name()
            .trim_start_matches("DECISION_SOURCE_")
            .to_ascii_lowercase();
        println!(
            "  {:<24} {:>10}/{:<10} reset in {:<8} window {:<6} {}{}{}  [{algorithm}, {source}]",
            l.name,
            l.remaining,
            l.limit,
            duration_text(l.reset_after),
            duration_text(l.window),
            if l.refused { "REFUSED" } else { "ok" },
            match (l.shadow_mode, l.quota_mode) {
                (true, _) => " (shadow)",
                (_, true) => " (quota)",
                _ => "",
            },
            if l.refused {
                format!(", retry in {}", duration_text(l.retry_after))
            } else {
                String::new()
            },
        );
    }
}

/// Runs one command against the service at `endpoint` (e.g. `http://127.0.0.1:50052`) and prints the result.
pub async fn run(cmd: LimitsCommand, endpoint: &str) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .context("invalid endpoint")?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("cannot reach the rate-limit service at {endpoint}"))?;
    let mut client = RateLimitServiceClient::new(channel);
    match cmd {
        LimitsCommand::Check {
            target,
            cost,
            dry_run,
        } => {
            let a = address(target);
            let r = client
                .check(pb::CheckRequest {
                    domain: a.domain,
                    descriptors: a.descriptors,
                    key: a.key,
                    limits: Vec::new(),
                    limit_expression: a.expression,
                    cost,
                    dry_run,
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}: {}", s.code(), s.message()))?
                .into_inner();
            if r.allowed {
                println!("allowed{}", if dry_run { " (dry run)" } else { "" });
            } else {
                println!(
                    "refused by {:?}, retry in {}",
                    r.refused_by,
                    duration_text(r.retry_after)
                );
            }
            if r.degraded {
                println!("  (decided without Redis: failure modes applied)");
            }
            print_limits(&r.limits);
        }
        LimitsCommand::Inspect { target } => {
            let a = address(target);
            let r = client
                .inspect_key(pb::InspectKeyRequest {
                    domain: a.domain,
                    descriptors: a.descriptors,
                    key: a.key,
                    limits: Vec::new(),
                    limit_expression: a.expression,
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}: {}", s.code(), s.message()))?
                .into_inner();
            if r.limits.is_empty() {
                println!("no limit applies");
            }
            print_limits(&r.limits);
        }
        LimitsCommand::Reset { target } => {
            let a = address(target);
            let r = client
                .reset_key(pb::ResetKeyRequest {
                    domain: a.domain,
                    descriptors: a.descriptors,
                    key: a.key,
                    limits: Vec::new(),
                    limit_expression: a.expression,
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}: {}", s.code(), s.message()))?
                .into_inner();
            println!("removed {} counter(s)", r.removed);
        }
    }
    Ok(())
}
