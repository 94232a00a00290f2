//! Server plumbing shared by TaskService, RateLimitService and the gateway: the shutdown drain of
//! grpc.health.v1 and its deadline, and optional server reflection.

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

/// grpc.reflection.v1 over `descriptor_sets` and grpc.health.v1's schema, advertising exactly `services`
/// (the descriptor sets describe every redline service; a server lists only those it serves), and
/// grpc.health.v1.Health; or `None` when `disabled`. Reflection publishes the schema: handy for grpcurl in
/// development, off where that is unwanted.
pub fn reflection(
    disabled: bool,
    descriptor_sets: &[&[u8]],
    services: &[&str],
) -> Result<Option<ServerReflectionServer<impl ServerReflection>>, tonic_reflection::server::Error>
{
    if disabled {
        return Ok(None);
    }
    let builder = descriptor_sets.iter().fold(
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health"),
        |builder, set| builder.register_encoded_file_descriptor_set(set),
    );
    services
        .iter()
        .fold(builder, |builder, name| builder.with_service_name(*name))
        .build_v1()
        .map(Some)
}

/// Runs `serve` until it ends by itself, or until `delay + grace` after `shutdown`: a drain that outlives its
/// deadline is cut off, and the connections left close as the server is dropped. `None` when it was cut off.
pub async fn with_drain_deadline<T>(
    serve: impl std::future::Future<Output = T>,
    shutdown: &CancellationToken,
    delay: Duration,
    grace: Duration,
) -> Option<T> {
    tokio::select! {
        result = serve => Some(result),
        () = async { shutdown.cancelled().await; tokio::time::sleep(delay + grace).await } => {
            tracing::warn!(?grace, "drain deadline reached; closing the remaining connections");
            None
        }
    }
}
