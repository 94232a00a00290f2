//! Connecting to Redis so that a call never hangs while Redis is away.
//!
//! Three settings together give "fail fast, reconnect by yourself":
//! - commands are sent with `fail_fast`, so while the connection is down they fail at once instead of
//!   queueing behind the reconnection (the original's submit hung for about 19 s);
//! - a command timeout bounds a call to a Redis that accepts connections but does not answer;
//! - a reconnect policy with no attempt limit keeps trying in the background, and the first connection
//!   follows it too, so a service started before Redis comes up by itself.
//!
//! Commands are sent at most once: a script that ran but whose reply was lost must not run twice (a second
//! submit would enqueue a duplicate). The caller sees UNAVAILABLE and may retry with an idempotency key.

use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::config::ReconnectPolicy;

use crate::StoreError;

/// How the client talks to Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Upper bound of one command, including a script.
    pub command_timeout: Duration,
    /// Upper bound of establishing a connection.
    pub connect_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            command_timeout: Duration::from_millis(800),
            connect_timeout: Duration::from_millis(500),
        }
    }
}

fn builder(url: &str, opts: &RedisOptions) -> Result<Builder, StoreError> {
    let mut config = Config::from_url(url).map_err(StoreError::Redis)?;
    config.fail_fast = false;
    let mut builder = Builder::from_config(config);
    let connect_timeout = opts.connect_timeout;
    let command_timeout = opts.command_timeout;
    builder
        .with_connection_config(|c| {
            c.connection_timeout = connect_timeout;
            c.internal_command_timeout = connect_timeout;
            c.max_command_attempts = 1;
        })
        .with_performance_config(|p| {
            p.default_command_timeout = command_timeout;
        })
        // Retry forever, 50 ms doubling to 1 s: Redis coming back is noticed within a second.
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 1000, 2));
    Ok(builder)
}

/// A command client, connecting in the background. Commands fail fast while it is disconnected.
pub fn client(url: &str, opts: &RedisOptions) -> Result<Client, StoreError> {
    let client = builder(url, opts)?.build().map_err(StoreError::Redis)?;
    client.connect();
    Ok(client)
}

/// A pub/sub client that re-subscribes to its channels after every reconnection.
pub fn subscriber(url: &str, opts: &RedisOptions) -> Result<SubscriberClient, StoreError> {
    let client = builder(url, opts)?
        .build_subscriber_client()
        .map_err(StoreError::Redis)?;
    client.connect();
    client.manage_subscriptions();
    Ok(client)
}

/// The options every queue command is sent with.
pub(crate) fn command_options() -> Options {
    Options {
        fail_fast: true,
        max_attempts: Some(1),
        ..Default::default()
    }
}
