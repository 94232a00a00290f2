//! CheckStream: one reply per request, in request order, errors in their replies, and an end on shutdown.

use redline_proto::redline::ratelimit::v1 as pb;
use redline_proto::redline::ratelimit::v1::check_stream_response::Result as Reply;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use redline_testkit::RedisServer;

use crate::fixture::Service;

fn keyed(key: &str, expression: &str) -> pb::CheckStreamRequest {
    pb::CheckStreamRequest {
        request: Some(pb::CheckRequest {
            key: key.to_owned(),
            limit_expression: expression.to_owned(),
            ..Default::default()
        }),
    }
}

/// Opens a stream; returns where requests go and the replies.
async fn open(
    service: &Service,
) -> (
    mpsc::Sender<pb::CheckStreamRequest>,
    tonic::Streaming<pb::CheckStreamResponse>,
) {
    let (requests, outgoing) = mpsc::channel(1024);
    let replies = service
        .client()
        .await
        .check_stream(ReceiverStream::new(outgoing))
        .await
        .expect("CheckStream")
        .into_inner();
    (requests, replies)
}

#[tokio::test]
async fn replies_come_in_request_order_and_a_bad_request_does_not_end_the_stream() {
    let redis = RedisServer::start();
    let service = Service::start(&redis.url(), &[]).await;
    let (requests, mut replies) = open(&service).await;

    // Request i has its own key and a limit of i + 1, so each reply names the request it answers. All of
    // them are sent before any reply is read: they are in progress together.
    for i in 0..40u64 {
        requests
            .send(keyed(
                &format!("order-{i}"),
                &format!("{} per minute", i + 1),
            ))
            .await
            .unwrap();
    }
    // An invalid request (no domain, no key) between valid ones, then five hits on one key limited to three.
    requests
        .send(pb::CheckStreamRequest {
            request: Some(pb::CheckRequest::default()),
        })
        .await
        .unwrap();
    for _ in 0..5 {
        requests
            .send(keyed("shared", "3 per minute"))
            .await
            .unwrap();
    }
    drop(requests);

    for i in 0..40u64 {
        let reply = replies
            .message()
            .await
            .unwrap()
            .expect("a reply per request");
        let Some(Reply::Response(r)) = reply.result else {
            panic!("request {i} failed: {reply:?}");
        };
        assert!(r.allowed, "request {i}");
        assert_eq!((r.limits[0].limit, r.limits[0].remaining), (i + 1, i));
    }
    let reply = replies
        .message()
        .await
        .unwrap()
        .expect("the bad request's reply");
    let Some(Reply::Error(status)) = reply.result else {
        panic!("an empty request must be rejected: {reply:?}");
    };
    assert_eq!(status.code, Code::InvalidArgument as i32);
    assert!(!status.message.is_empty());
    let mut allowed = 0;
    for _ in 0..5 {
        let reply = replies
            .message()
            .await
            .unwrap()
            .expect("the stream goes on");
        let Some(Reply::Response(r)) = reply.result else {
            panic!("unexpected {reply:?}");
        };
        allowed += usize::from(r.allowed);
    }
    assert_eq!(allowed, 3, "a stream's decisions share the key's quota");
    // The caller closed its side: the call ends with OK.
    assert!(replies.message().await.unwrap().is_none());
    assert!(service.stop().await);
}

#[tokio::test]
async fn streams_end_with_unavailable_when_the_server_shuts_down() {
    let redis = RedisServer::start();
    let service = Service::start(&redis.url(), &[]).await;
    let (requests, mut replies) = open(&service).await;
    for i in 0..3 {
        requests
            .send(keyed(&format!("s{i}"), "10 per minute"))
            .await
            .unwrap();
        let reply = replies.message().await.unwrap().expect("reply");
        assert!(matches!(reply.result, Some(Reply::Response(r)) if r.allowed));
    }
    // The caller keeps its side open. Shutdown must not wait for it: the stream ends, with a status that
    // tells the caller to go elsewhere, and the server finishes draining.
    let stopping = tokio::spawn(service.stop());
    let end = tokio::time::timeout(std::time::Duration::from_secs(5), replies.message())
        .await
        .expect("the stream ends on shutdown");
    assert_eq!(end.expect_err("an error status").code(), Code::Unavailable);
    assert!(stopping.await.unwrap(), "the server drained");
    drop(requests);
}
