//! Rate-limit decisions over RateLimitService's `CheckStream`: one long-lived stream per backend connection,
//! shared by every request the gateway serves.
//!
//! A unary `Check` per HTTP request costs both sides a call: headers, trailers, an HTTP/2 stream and a task.
//! Over a stream each decision is one message each way, which is most of a decision's cost saved. The service
//! answers a stream's requests in order, so a lane only keeps the waiting callers in a queue and hands each
//! reply to the caller at its front.
//!
//! A lane opens its stream when the first decision arrives and reopens it after it breaks (RateLimitService
//! restarted or shut down): the decisions in progress on a broken stream fail with its status, which the
//! caller treats like a failed unary call (one retry, then its failure mode).

use std::collections::VecDeque;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use redline_proto::redline::ratelimit::v1 as pb;
use redline_proto::redline::ratelimit::v1::check_stream_response::Result as Reply;
use redline_proto::redline::ratelimit::v1::rate_limit_service_client::RateLimitServiceClient;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Decisions of one stream in progress at once; RateLimitService runs up to 256 per stream.
const STREAM_DEPTH: usize = 256;
/// Decisions waiting for a lane. A full queue fails a decision at once, so its failure mode answers instead of
/// a wait for a service that is not keeping up.
const QUEUE: usize = 4096;

/// A decision waiting for its reply.
struct Job {
    request: pb::CheckRequest,
    reply: oneshot::Sender<Result<pb::CheckResponse, Status>>,
}

/// The lanes (one stream each) over a backend's connections.
pub struct DecisionStreams {
    backend: crate::Backend,
    /// Started on first use, inside the runtime that serves requests.
    lanes: OnceLock<Vec<mpsc::Sender<Job>>>,
    next: AtomicUsize,
}

impl std::fmt::Debug for DecisionStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionStreams")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl DecisionStreams {
    /// Lanes over `backend`'s connections; nothing is connected until the first decision.
    pub fn new(backend: crate::Backend) -> Self {
        Self {
            backend,
            lanes: OnceLock::new(),
            next: AtomicUsize::new(0),
        }
    }

    /// Decides `request` on the next lane: the answer Check would give, or the status it would fail with.
    pub async fn check(&self, request: pb::CheckRequest) -> Result<pb::CheckResponse, Status> {
        let lanes = self.lanes.get_or_init(|| {
            self.backend
                .channels()
                .iter()
                .map(|channel| {
                    let (jobs, waiting) = mpsc::channel(QUEUE);
                    tokio::spawn(lane(channel.clone(), waiting));
                    jobs
                })
                .collect()
        });
        let i = self.next.fetch_add(1, Ordering::Relaxed) % lanes.len();
        let (reply, answer) = oneshot::channel();
        lanes[i]
            .try_send(Job { request, reply })
            .map_err(|_| Status::unavailable("rate-limit decisions queue is full"))?;
        answer
            .await
            .unwrap_or_else(|_| Err(Status::unavailable("rate-limit stream closed")))
    }
}

/// One lane: opens a stream when work arrives, feeds it, and hands replies out in order.
async fn lane(channel: Channel, mut jobs: mpsc::Receiver<Job>) {
    let mut client = RateLimitServiceClient::new(channel);
    // Until the gateway is gone.
    while let Some(first) = jobs.recv().await {
        let (requests, outgoing) = mpsc::channel(STREAM_DEPTH);
        let mut replies = match client.check_stream(ReceiverStream::new(outgoing)).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                // Unreachable: this decision fails now; the next one tries again.
                let _ = first.reply.send(Err(status));
                continue;
            }
        };
        let mut waiting: VecDeque<oneshot::Sender<Result<pb::CheckResponse, Status>>> =
            VecDeque::new();
        let mut next = Some(first);
        let broken = loop {
            if let Some(job) = next.take() {
                // A caller that gave up (timed out) is not sent: its decision would consume quota for nothing.
                if !job.reply.is_closed() {
                    let message = pb::CheckStreamRequest {
                        request: Some(job.request),
                    };
                    if requests.send(message).await.is_err() {
                        let status = Status::unavailable("rate-limit stream closed");
                        let _ = job.reply.send(Err(status.clone()));
                        break status;
                    }
                    waiting.push_back(job.reply);
                }
            }
            tokio::select! {
                job = jobs.recv(), if waiting.len() < STREAM_DEPTH => match job {
                    Some(job) => next = Some(job),
                    None => return,
                },
                reply = replies.message() => match reply {
                    Ok(Some(message)) => {
                        let Some(caller) = waiting.pop_front() else {
                            break Status::internal("rate-limit stream replied to nothing");
                        };
                        let _ = caller.send(answer(message));
                    }
                    Ok(None) => break Status::unavailable("rate-limit stream ended"),
                    Err(status) => break status,
                },
            }
        };
        // The stream is gone: the decisions in progress on it fail with its status.
        for caller in waiting.drain(..) {
            let _ = caller.send(Err(broken.clone()));
        }
        tracing::debug!(code = ?broken.code(), error = %broken.message(), "rate-limit stream reopens");
    }
}

/// A stream reply as Check's result.
fn answer(message: pb::CheckStreamResponse) -> Result<pb::CheckResponse, Status> {
    match message.result {
        Some(Reply::Response(response)) => Ok(response),
        Some(Reply::Error(status)) => Err(Status::new(Code::from(status.code), status.message)),
        None => Err(Status::internal("empty rate-limit reply")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_become_check_results() {
        let ok = answer(pb::CheckStreamResponse {
            result: Some(Reply::Response(pb::CheckResponse {
                allowed: true,
                ..Default::default()
            })),
        });
        assert!(ok.is_ok_and(|r| r.allowed));
        let err = answer(pb::CheckStreamResponse {
            result: Some(Reply::Error(redline_proto::google::rpc::Status {
                code: Code::InvalidArgument as i32,
                message: "bad".to_owned(),
                details: Vec::new(),
            })),
        })
        .unwrap_err();
        assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "bad"));
        let empty = answer(pb::CheckStreamResponse { result: None }).unwrap_err();
        assert_eq!(empty.code(), Code::Internal);
    }
}
