//! The Redis task model of redline.
//!
//! This crate alone owns the queue's Redis schema: [`keys`] builds every key, `scripts/*.lua` holds one
//! atomic script per state transition, and [`TaskStore`] is the typed API over both. TaskService uses the
//! submit/read/control half, workers the claim/complete/heartbeat half; both must agree on one schema, which
//! is why it lives here.
//!
//! Layout:
//! - [`model`]: task states, records, claims and outcomes;
//! - [`keys`]: the key layout (documented there);
//! - [`scripts`]: the Lua transitions;
//! - [`store`]: the `TaskStore` API;
//! - [`connect`]: Redis clients that fail fast and reconnect by themselves;
//! - [`backoff`]: retry delays;

pub mod backoff;
pub mod connect;
mod error;
pub mod keys;
pub mod model;
pub mod scripts;
pub mod store;

pub use error::StoreError;
pub use model::*;
pub use store::{
    Cursor, Heartbeat, HeartbeatMode, INDEX_IDS_PER_ENTRY, ListFilter, ListPage, QueueConfig,
    TaskStore,
};

/// The queue REDLINE used, and the default.
pub const DEFAULT_QUEUE: &str = "redline_tasks";
