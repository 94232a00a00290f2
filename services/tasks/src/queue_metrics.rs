//! Queue gauges for Prometheus, read from Redis when `/metrics` is scraped.
//!
//! The queue's own counters live in Redis (every transition script bumps them), so they are totals for the
//! whole deployment, not for this process: every TaskService replica reports the same values, and dashboards
//! take `max` across replicas. Reading them at scrape time keeps them exact and costs one pipeline per scrape.
//! Per-process counters (submissions here, attempts in the workers) are recorded where they happen.

use std::sync::Arc;

use redline_runtime::admin::Collector;
use redline_taskqueue::{QueueStats, TaskStore};

/// A collector that refreshes the queue gauges from `store`.
pub fn collector(store: TaskStore) -> Collector {
    Arc::new(move || {
        let store = store.clone();
        Box::pin(async move {
            match store.stats().await {
                Ok(stats) => {
                    metrics::gauge!("redline_redis_up").set(1.0);
                    record(&stats);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "queue statistics unavailable for /metrics");
                    metrics::gauge!("redline_redis_up").set(0.0);
                }
            }
        })
    })
}

fn record(stats: &QueueStats) {
    for q in &stats.queues {
        let queue = q.queue.clone();
        metrics::gauge!("redline_queue_depth", "queue" => queue.clone()).set(q.queued as f64);
        metrics::gauge!("redline_queue_scheduled", "queue" => queue.clone())
            .set(q.scheduled as f64);
        metrics::gauge!("redline_queue_running", "queue" => queue.clone()).set(q.running as f64);
        // An empty queue has no oldest task: 0, so that alerts on age clear when the queue drains.
        let age = q.oldest_queued_age.map_or(0.0, |d| d.as_secs_f64());
        metrics::gauge!("redline_queue_oldest_task_age_seconds", "queue" => queue.clone()).set(age);
        for (outcome, n) in [
            ("succeeded", q.succeeded),
            ("failed", q.failed),
            ("cancelled", q.cancelled),
            ("retried", q.retried),
            ("recovered", q.recovered),
        ] {
            metrics::counter!("redline_queue_tasks_total", "queue" => queue.clone(), "outcome" => outcome)
                .absolute(n);
        }
    }
    metrics::gauge!("redline_workers_alive").set(stats.workers as f64);
    metrics::gauge!("redline_dead_letter_tasks").set(stats.dead_letter as f64);
    metrics::counter!("redline_lease_expiries_total").absolute(stats.lease_expiries);
    metrics::counter!("redline_stale_completions_total").absolute(stats.stale_completions);
}
