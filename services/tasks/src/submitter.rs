//! Group commit for submissions: concurrent SubmitTask calls share one submit script.
//!
//! While one script call is in flight, new submissions queue up; the next call takes all of them (up to a
//! cap). Under light load a submission goes alone, without waiting for company; under heavy load one round
//! trip enqueues dozens of tasks. This is what lifts single-task RPCs from one-round-trip-per-task throughput
//! to batch throughput.

use redline_taskqueue::{NewTask, StoreError, Submitted, TaskStore};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

type Reply = oneshot::Sender<Result<Submitted, SubmitFailure>>;

/// Why a submission was not stored: the failure of its whole batch, shared by every task in it.
#[derive(Debug, Clone)]
pub enum SubmitFailure {
    /// The batch's script call failed.
    Store(Arc<StoreError>),
    /// The batching loop is gone.
    Stopped,
}

/// Handle to the batching loop.
#[derive(Debug, Clone)]
pub struct Submitter {
    tx: mpsc::Sender<(NewTask, Reply)>,
}

const MAX_BATCH: usize = 256;

impl Submitter {
    /// Starts the loop; it ends when every handle is dropped.
    pub fn spawn(store: TaskStore) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(run(store, rx));
        Self { tx }
    }

    /// Submits one task through the shared batch.
    pub async fn submit(&self, task: NewTask) -> Result<Submitted, SubmitFailure> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((task, reply))
            .await
            .map_err(|_| SubmitFailure::Stopped)?;
        rx.await.unwrap_or(Err(SubmitFailure::Stopped))
    }
}

async fn run(store: TaskStore, mut rx: mpsc::Receiver<(NewTask, Reply)>) {
    let mut tasks = Vec::with_capacity(MAX_BATCH);
    let mut replies = Vec::with_capacity(MAX_BATCH);
    while let Some((task, reply)) = rx.recv().await {
        tasks.push(task);
        replies.push(reply);
        while tasks.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok((t, r)) => {
                    tasks.push(t);
                    replies.push(r);
                }
                Err(_) => break,
            }
        }
        match store.submit(&tasks).await {
            Ok(results) => {
                for (reply, result) in replies.drain(..).zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            // One submission's new queue refused the whole call: the others are not at fault, so each goes
            // again alone and only the one that needs a queue too many is refused.
            Err(StoreError::TooManyQueues { .. }) if tasks.len() > 1 => {
                for (task, reply) in tasks.iter().zip(replies.drain(..)) {
                    let result = store
                        .submit(std::slice::from_ref(task))
                        .await
                        .and_then(|r| {
                            r.into_iter()
                                .next()
                                .ok_or_else(|| StoreError::Protocol("submit reply".to_owned()))
                        })
                        .map_err(|e| SubmitFailure::Store(Arc::new(e)));
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                let failure = SubmitFailure::Store(Arc::new(e));
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(failure.clone()));
                }
            }
        }
        tasks.clear();
    }
}
