//! An execution journal outside the queue, and the checker that judges a history by it.
//!
//! The queue's own records say what Redis believes; whether a task ran twice at once is a fact about the
//! workers, so it is written down by the code that runs: the [`Journaled`] task type appends a line when an
//! attempt starts and when it stops, with the task id, attempt, fence and worker, to a file every process of
//! a test shares. Killing a worker process is written down too ([`Journal::killed`]), since a killed attempt
//! cannot say that it stopped, and so is cutting one off from Redis ([`Journal::cut_off`]). [`Journal::check`] then reads the history and the store and reports, in the
//! manner of a Jepsen checker:
//!
//! - **lost**: an acknowledged submit whose task did not succeed;
//! - **running without a lease**: a task Redis calls running under a worker whose lease has run out;
//! - **concurrent**: two executions of one task that overlap in time;
//! - **finished twice**: a task whose handler ran to its end more than once, unless the outcome of the
//!   earlier run could not reach Redis: its worker was killed after the handler returned and before the next
//!   run began (the outcome died with the process), or the handler returned while its worker was cut off
//!   from Redis (the outcome waited until the lease ran out). At-least-once delivery then runs the task
//!   again, and that is counted, not flagged;
//! - and, as figures rather than failures, **re-runs** (executions beyond the first of each task) and
//!   **outcomes lost** to kills and to partitions.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use futures::future::BoxFuture;
use redline_catalog::TaskType;
use redline_taskqueue::{TaskState, TaskStore};
use redline_worker::{TaskContext, TaskError, TaskHandler};
use serde::{Deserialize, Serialize};

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Entry {
    /// An attempt began running its handler.
    Start {
        /// Task id.
        task: String,
        /// Attempt number.
        attempt: u32,
        /// The attempt's fence.
        fence: u64,
        /// The worker running it.
        worker: String,
        /// Wall-clock microseconds (every process of a test shares the machine's clock).
        at_us: u64,
    },
    /// An attempt's handler returned.
    End {
        /// Task id.
        task: String,
        /// The attempt's fence.
        fence: u64,
        /// The worker that ran it.
        worker: String,
        /// Wall-clock microseconds.
        at_us: u64,
        /// True when it ran to its end and succeeded; false when it stopped on cancellation or failed.
        finished: bool,
        /// True when it failed on purpose (`fail_attempts`): the next execution is a retry, not a re-run.
        #[serde(default)]
        failed: bool,
    },
    /// A worker process was killed: its open executions ended at this instant.
    Killed {
        /// The worker.
        worker: String,
        /// Wall-clock microseconds.
        at_us: u64,
    },
    /// A worker process could not reach Redis over this span.
    CutOff {
        /// The worker.
        worker: String,
        /// Wall-clock microseconds when it was cut off.
        from_us: u64,
        /// Wall-clock microseconds when it could reach Redis again.
        to_us: u64,
    },
}

/// How long before a cut-off an outcome may still be waiting to be sent: a worker records outcomes one batch
/// at a time, and the batch in flight may take its whole command timeout (800 ms) to fail.
const OUTCOME_IN_FLIGHT_US: u64 = 1_000_000;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// An append-only JSON-lines file shared by the processes of one test. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Journal {
    path: PathBuf,
    file: Arc<Mutex<File>>,
}

impl Journal {
    /// Opens (creating) the journal at `path` for appending.
    ///
    /// # Panics
    /// When the file cannot be opened.
    pub fn open(path: &Path) -> Self {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("the journal file opens");
        Self {
            path: path.to_owned(),
            file: Arc::new(Mutex::new(file)),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry. Each line is written with one `write` on an `O_APPEND` file, so lines from several
    /// processes do not interleave.
    ///
    /// # Panics
    /// When the file cannot be written: a journal with holes would make the checker lie.
    pub fn record(&self, entry: &Entry) {
        let mut line = serde_json::to_vec(entry).expect("an entry serializes");
        line.push(b'\n');
        self.file
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write_all(&line)
            .expect("the journal is writable");
    }

    /// Records that `worker`'s process was killed now.
    pub fn killed(&self, worker: &str) {
        self.record(&Entry::Killed {
            worker: worker.to_owned(),
            at_us: now_us(),
        });
    }

    /// Records that `worker` could not reach Redis from `from_us` until now.
    pub fn cut_off(&self, worker: &str, from_us: u64) {
        self.record(&Entry::CutOff {
            worker: worker.to_owned(),
            from_us,
            to_us: now_us(),
        });
    }

    /// Wall-clock microseconds now, as the journal writes them.
    pub fn now_us() -> u64 {
        now_us()
    }

    /// The history so far.
    pub fn history(&self) -> History {
        History::new(&self.entries())
    }

    /// Every entry so far, in file order.
    ///
    /// # Panics
    /// When the file cannot be read or holds a line that is not an entry.
    pub fn entries(&self) -> Vec<Entry> {
        let file = File::open(&self.path).expect("the journal is readable");
        BufReader::new(file)
            .lines()
            .map(|l| serde_json::from_str(&l.expect("a line")).expect("an entry"))
            .collect()
    }

    /// Judges the history: the journal, and what `store` says of every `acknowledged` task now. Call it once
    /// the workload has settled (every task had time to finish).
    ///
    /// # Panics
    /// When the store cannot be read.
    pub async fn check(&self, acknowledged: &[String], store: &TaskStore) -> Verdict {
        let mut verdict = judge(&self.entries());
        let live: HashSet<String> = store
            .workers()
            .await
            .expect("workers")
            .into_iter()
            .map(|w| w.id)
            .collect();
        let mut records = Vec::with_capacity(acknowledged.len());
        for ids in acknowledged.chunks(1000) {
            records.extend(store.get_many(ids).await.expect("task records"));
        }
        for (id, record) in acknowledged.iter().zip(records) {
            match record {
                Some(r) if r.state == TaskState::Succeeded => {}
                Some(r) if r.state == TaskState::Running => {
                    if !r.worker_id.as_ref().is_some_and(|w| live.contains(w)) {
                        verdict.running_without_lease.push(id.clone());
                    }
                    verdict.lost.push(format!("{id} ({:?})", r.state));
                }
                Some(r) => verdict.lost.push(format!("{id} ({:?})", r.state)),
                None => verdict.lost.push(format!("{id} (no record)")),
            }
        }
        verdict
    }
}

/// What a history shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Acknowledged tasks that did not succeed (with the state they are in).
    pub lost: Vec<String>,
    /// Tasks Redis calls running under a worker without a live lease.
    pub running_without_lease: Vec<String>,
    /// Tasks with two executions overlapping in time (with the two workers).
    pub concurrent: Vec<String>,
    /// Tasks whose handler ran to its end more than once while the worker of the earlier run lived on.
    pub finished_twice: Vec<String>,
    /// Tasks that ran to their end again because their worker was killed between the handler's return and
    /// the next run, taking the unrecorded outcome with it.
    pub outcomes_lost_to_kills: usize,
    /// Tasks that ran to their end again because their handler returned while its worker was cut off from
    /// Redis, so the outcome arrived after the lease had run out.
    pub outcomes_lost_to_partitions: usize,
    /// Executions beyond the first of each task.
    pub reruns: usize,
    /// Executions in the journal.
    pub executions: usize,
}

impl Verdict {
    /// True when nothing was lost, left running, run at once twice or finished twice.
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty()
            && self.running_without_lease.is_empty()
            && self.concurrent.is_empty()
            && self.finished_twice.is_empty()
    }

    /// Panics with the whole verdict unless it is clean.
    ///
    /// # Panics
    /// When the history shows a lost, stranded, concurrent or twice-finished task.
    pub fn assert_clean(&self) {
        assert!(self.is_clean(), "the history is not clean: {self:#?}");
    }
}

/// One execution of a task, as the journal shows it.
#[derive(Debug, Clone)]
pub struct Execution {
    /// The worker that ran it.
    pub worker: String,
    /// Its fence (fences grow with every claim, so fence order is execution order).
    pub fence: u64,
    /// When it started (wall-clock microseconds).
    pub start: u64,
    /// When it stopped: its end, or else the kill of its process; `None` when neither was written.
    pub stop: Option<u64>,
    /// It ran to its end and succeeded.
    pub finished: bool,
    /// It failed on purpose, so the next execution is a retry.
    pub failed: bool,
}

/// A journal read back: every task's executions in fence order, and when each worker was killed or cut off.
#[derive(Debug, Default)]
pub struct History {
    /// Executions per task id, in fence order.
    pub executions: BTreeMap<String, Vec<Execution>>,
    kills: BTreeMap<String, Vec<u64>>,
    cut_offs: BTreeMap<String, Vec<(u64, u64)>>,
}

impl History {
    /// Pairs each start with its end, and ends an execution that never said so at its process's kill.
    pub fn new(entries: &[Entry]) -> Self {
        let mut by_task: BTreeMap<&str, BTreeMap<(u64, &str), Execution>> = BTreeMap::new();
        let mut history = Self::default();
        for e in entries {
            match e {
                Entry::Start {
                    task,
                    fence,
                    worker,
                    at_us,
                    ..
                } => {
                    by_task.entry(task).or_default().insert(
                        (*fence, worker),
                        Execution {
                            worker: worker.clone(),
                            fence: *fence,
                            start: *at_us,
                            stop: None,
                            finished: false,
                            failed: false,
                        },
                    );
                }
                Entry::End {
                    task,
                    fence,
                    worker,
                    at_us,
                    finished,
                    failed,
                } => {
                    if let Some(x) = by_task
                        .get_mut(task.as_str())
                        .and_then(|t| t.get_mut(&(*fence, worker.as_str())))
                    {
                        x.stop = Some(*at_us);
                        x.finished = *finished;
                        x.failed = *failed;
                    }
                }
                Entry::Killed { worker, at_us } => history
                    .kills
                    .entry(worker.clone())
                    .or_default()
                    .push(*at_us),
                Entry::CutOff {
                    worker,
                    from_us,
                    to_us,
                } => history
                    .cut_offs
                    .entry(worker.clone())
                    .or_default()
                    .push((*from_us, *to_us)),
            }
        }
        for (task, executions) in by_task {
            let executions = executions
                .into_values()
                .map(|mut x| {
                    if x.stop.is_none() {
                        x.stop = history.killed_after(&x.worker, x.start);
                    }
                    x
                })
                .collect();
            history.executions.insert(task.to_owned(), executions);
        }
        history
    }

    /// The first kill of `worker` at or after `at`.
    fn killed_after(&self, worker: &str, at: u64) -> Option<u64> {
        self.kills
            .get(worker)
            .and_then(|k| k.iter().copied().find(|&k| k >= at))
    }

    /// Whether `worker` was cut off from Redis at `at`, or within an outcome's flight time before.
    fn cut_off_at(&self, worker: &str, at: u64) -> bool {
        self.cut_offs.get(worker).is_some_and(|c| {
            c.iter()
                .any(|&(from, to)| from.saturating_sub(OUTCOME_IN_FLIGHT_US) <= at && at <= to)
        })
    }
}

/// The journal-only part of the verdict.
fn judge(entries: &[Entry]) -> Verdict {
    let history = History::new(entries);
    let mut verdict = Verdict::default();
    for (task, executions) in &history.executions {
        // An execution with no known stop may still be running.
        let spans: Vec<(u64, u64, &Execution)> = executions
            .iter()
            .map(|x| (x.start, x.stop.unwrap_or(u64::MAX), x))
            .collect();
        verdict.executions += spans.len();
        verdict.reruns += spans.len().saturating_sub(1);
        'pairs: for (i, a) in spans.iter().enumerate() {
            for b in &spans[i + 1..] {
                if a.0 < b.1 && b.0 < a.1 {
                    verdict.concurrent.push(format!(
                        "{task}: {} and {} overlap by {:?}",
                        a.2.worker,
                        b.2.worker,
                        Duration::from_micros(a.1.min(b.1).saturating_sub(a.0.max(b.0)))
                    ));
                    break 'pairs;
                }
            }
        }
        let mut finished: Vec<&(u64, u64, &Execution)> =
            spans.iter().filter(|s| s.2.finished).collect();
        finished.sort_by_key(|s| s.0);
        for pair in finished.windows(2) {
            let (earlier, later) = (pair[0], pair[1]);
            let killed_in_between = history
                .killed_after(&earlier.2.worker, earlier.1)
                .is_some_and(|at| at <= later.0);
            if killed_in_between {
                verdict.outcomes_lost_to_kills += 1;
            } else if history.cut_off_at(&earlier.2.worker, earlier.1) {
                verdict.outcomes_lost_to_partitions += 1;
            } else {
                verdict.finished_twice.push(task.clone());
                break;
            }
        }
    }
    verdict
}

/// Arguments of [`JournalTask`].
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JournalArgs {
    /// How long the handler works, in milliseconds (at most an hour).
    #[serde(default)]
    pub ms: u64,
    /// How many of its first attempts fail (retryably) once their work is done, to exercise retries.
    #[serde(default)]
    pub fail_attempts: u32,
}

/// A test task type that writes its executions to a [`Journal`].
#[derive(Debug)]
pub struct JournalTask;

impl TaskType for JournalTask {
    const NAME: &'static str = "test.journal";
    const DESCRIPTION: &'static str = "Works for `ms` milliseconds, writing its start and end to the execution journal; its first \
         `fail_attempts` attempts then fail retryably.";
    type Args = JournalArgs;
    type Output = ();
}

/// The handler of [`JournalTask`] for one worker: stops promptly when cancelled, and says so in the journal.
#[derive(Debug, Clone)]
pub struct Journaled {
    journal: Journal,
    worker: String,
}

impl Journaled {
    /// A handler writing to `journal` as `worker`.
    pub fn new(journal: Journal, worker: &str) -> Self {
        Self {
            journal,
            worker: worker.to_owned(),
        }
    }
}

impl TaskHandler for Journaled {
    type Task = JournalTask;

    fn run(
        &self,
        ctx: TaskContext,
        args: JournalArgs,
    ) -> BoxFuture<'static, Result<(), TaskError>> {
        let journal = self.journal.clone();
        let worker = self.worker.clone();
        async move {
            journal.record(&Entry::Start {
                task: ctx.task_id.clone(),
                attempt: ctx.attempt,
                fence: ctx.fence(),
                worker: worker.clone(),
                at_us: now_us(),
            });
            let work = Duration::from_millis(args.ms.min(3_600_000));
            let worked = tokio::select! {
                () = tokio::time::sleep(work) => true,
                () = ctx.cancellation().cancelled() => false,
            };
            let fails = worked && ctx.attempt <= args.fail_attempts;
            let finished = worked && !fails;
            journal.record(&Entry::End {
                task: ctx.task_id.clone(),
                fence: ctx.fence(),
                worker,
                at_us: now_us(),
                finished,
                failed: fails,
            });
            if finished {
                Ok(())
            } else if fails {
                Err(TaskError::Retryable(format!(
                    "attempt {} fails as asked",
                    ctx.attempt
                )))
            } else {
                Err(TaskError::Cancelled)
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(task: &str, fence: u64, worker: &str, at_us: u64) -> Entry {
        Entry::Start {
            task: task.into(),
            attempt: fence as u32,
            fence,
            worker: worker.into(),
            at_us,
        }
    }

    fn end(task: &str, fence: u64, worker: &str, at_us: u64, finished: bool) -> Entry {
        Entry::End {
            task: task.into(),
            fence,
            worker: worker.into(),
            at_us,
            finished,
            failed: false,
        }
    }

    #[test]
    fn sequential_reruns_are_counted_not_flagged() {
        let v = judge(&[
            start("t", 1, "a", 10),
            end("t", 1, "a", 20, false),
            start("t", 2, "b", 30),
            end("t", 2, "b", 40, true),
        ]);
        assert!(
            v.concurrent.is_empty() && v.finished_twice.is_empty(),
            "{v:?}"
        );
        assert_eq!((v.executions, v.reruns), (2, 1));
    }

    #[test]
    fn a_run_again_after_its_worker_was_killed_is_counted_not_flagged() {
        let v = judge(&[
            start("t", 1, "a", 10),
            end("t", 1, "a", 20, true),
            Entry::Killed {
                worker: "a".into(),
                at_us: 25,
            },
            start("t", 2, "b", 30),
            end("t", 2, "b", 40, true),
        ]);
        assert!(v.finished_twice.is_empty(), "{v:?}");
        assert_eq!(v.outcomes_lost_to_kills, 1);
        // Without the kill, the same history finished twice.
        let v = judge(&[
            start("t", 1, "a", 10),
            end("t", 1, "a", 20, true),
            start("t", 2, "b", 30),
            end("t", 2, "b", 40, true),
        ]);
        assert_eq!(v.finished_twice, vec!["t".to_owned()]);
    }

    #[test]
    fn a_run_again_after_its_outcome_was_cut_off_is_counted_not_flagged() {
        let history = |from_us, to_us| {
            judge(&[
                start("t", 1, "a", 10_000_000),
                end("t", 1, "a", 20_000_000, true),
                Entry::CutOff {
                    worker: "a".into(),
                    from_us,
                    to_us,
                },
                start("t", 2, "b", 40_000_000),
                end("t", 2, "b", 41_000_000, true),
            ])
        };
        // The handler returned during the cut-off, or just before it with its outcome still queued.
        for (from, to) in [(15_000_000, 35_000_000), (20_500_000, 35_000_000)] {
            let v = history(from, to);
            assert!(v.finished_twice.is_empty(), "{v:?}");
            assert_eq!(v.outcomes_lost_to_partitions, 1);
        }
        // A cut-off long after the handler returned did not stop its outcome: finished twice.
        let v = history(25_000_000, 35_000_000);
        assert_eq!(v.finished_twice, vec!["t".to_owned()]);
        // Nor did one of another worker's.
        let v = judge(&[
            start("t", 1, "a", 10_000_000),
            end("t", 1, "a", 20_000_000, true),
            Entry::CutOff {
                worker: "c".into(),
                from_us: 15_000_000,
                to_us: 35_000_000,
            },
            start("t", 2, "b", 40_000_000),
            end("t", 2, "b", 41_000_000, true),
        ]);
        assert_eq!(v.finished_twice, vec!["t".to_owned()]);
    }

    #[test]
    fn overlapping_and_twice_finished_executions_are_flagged() {
        let v = judge(&[
            start("t", 1, "a", 10),
            start("t", 2, "b", 15),
            end("t", 1, "a", 20, true),
            end("t", 2, "b", 40, true),
        ]);
        assert_eq!(v.concurrent.len(), 1, "{v:?}");
        assert_eq!(v.finished_twice, vec!["t".to_owned()]);
    }

    #[test]
    fn a_killed_execution_ends_at_the_kill_and_an_open_one_never_ends() {
        let killed = judge(&[
            start("t", 1, "a", 10),
            Entry::Killed {
                worker: "a".into(),
                at_us: 12,
            },
            start("t", 2, "b", 15),
        ]);
        assert!(killed.concurrent.is_empty(), "{killed:?}");
        let open = judge(&[start("t", 1, "a", 10), start("t", 2, "b", 15)]);
        assert_eq!(open.concurrent.len(), 1, "{open:?}");
    }
}
