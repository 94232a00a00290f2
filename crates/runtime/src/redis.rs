//! What every process checks of the Redis it is given.

use fred::prelude::*;

/// Refuses a Redis that may evict keys.
///
/// Any `maxmemory-policy` other than `noeviction` lets Redis silently delete queued tasks, leases, results and
/// rate-limit counters under memory pressure (the original ran its
/// broker with `allkeys-lru`). A managed Redis that forbids `CONFIG` is accepted with a warning: its policy
/// can't be read.
pub async fn check_eviction_policy(client: &Client) -> Result<(), EvictionPolicyError> {
    let reply: Result<Vec<String>, _> = client.config_get("maxmemory-policy").await;
    match reply {
        Ok(pair) => match pair.get(1).map(String::as_str) {
            Some("noeviction") | None => Ok(()),
            Some(other) => Err(EvictionPolicyError::Evicting(other.to_owned())),
        },
        Err(e)
            if matches!(
                e.kind(),
                fred::error::ErrorKind::IO
                    | fred::error::ErrorKind::Timeout
                    | fred::error::ErrorKind::Canceled
            ) =>
        {
            Err(EvictionPolicyError::Unreachable(e))
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read maxmemory-policy (CONFIG refused); make sure it is noeviction");
            Ok(())
        }
    }
}

/// Why the eviction policy check failed.
#[derive(Debug, thiserror::Error)]
pub enum EvictionPolicyError {
    /// The server may evict keys.
    #[error(
        "redis maxmemory-policy is '{0}': keys (queued tasks, rate-limit counters) could be evicted silently; set it to 'noeviction' \
         (CONFIG SET maxmemory-policy noeviction) or start with --allow-evicting-redis"
    )]
    Evicting(String),
    /// The server could not be asked.
    #[error("redis unreachable while checking maxmemory-policy")]
    Unreachable(#[source] fred::error::Error),
}
