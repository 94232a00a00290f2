//! The `redline` command's library: each module is one family of subcommands, and `main.rs` wires them.
//!
//! - [`up`]: `redline up`, the whole suite on one machine, each service in its own process;
//! - [`client`]: `submit`, `status`, `watch`, `cancel`, `retry`, `list`, `inspect`, a TaskService client;
//! - [`limits`]: `limits check|inspect|reset`, a RateLimitService client;
//! - [`convert`]: `convert IN OUT`, the data library's conversion as a local command.

pub mod client;
pub mod convert;
pub mod limits;
pub mod up;
