//! gRPC server plumbing shared by TaskService and RateLimitService: the shutdown drain of grpc.health.v1 and
//! optional server reflection.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tonic_reflection::server::v1::{ServerReflection, ServerReflectionServer};

/// The shutdown signal for `serve_with_incoming_shutdown`: resolves `delay` after `shutdown` is cancelled,
/// having reported every name in `readiness` NOT_SERVING at once.
///
/// Load balancers and Kubernetes endpoints stop sending new calls once readiness fails, but they learn of it
/// asynchronously; the listener keeps accepting during `delay` (a preStop pause without a shell), then closes
/// and in-flight calls drain.
pub async fn drain(
    health: HealthReporter,
    readiness: &[&str],
    shutdown: CancellationToken,
    delay: Duration,
) {
    shutdown.cancelled().await;
    for name in readiness {
        health
            .set_service_status(*name, ServingStatus::NotServing)
            .await;
    }
    tokio::time::sleep(delay).await;
}

/// grpc.reflection.v1 over `descriptor_sets` and grpc.health.v1's schema, or `None` when `disabled`.
/// Reflection publishes the whole schema: handy for grpcurl in development, off where that is unwanted.
pub fn reflection(
    disabled: bool,
    descriptor_sets: &[&[u8]],
) -> Result<Option<ServerReflectionServer<impl ServerReflection>>, tonic_reflection::server::Error>
{
    if disabled {
        return Ok(None);
    }
    descriptor_sets
        .iter()
        .fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
            |builder, set| builder.register_encoded_file_descriptor_set(set),
        )
        .build_v1()
        .map(Some)
}
