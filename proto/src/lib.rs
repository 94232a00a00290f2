//! Protobuf contracts of the redline services.
//!
//! `proto/` is both this crate and the buf module. Code is generated at build time by protox and
//! tonic-prost-build (no system `protoc`); packages appear as nested modules, for example
//! [`redline::tasks::v1`]. [`FILE_DESCRIPTOR_SET`] holds the encoded descriptors *with* extension options, for
//! gRPC reflection and for reading the `google.api.http` rules at run time.

#[allow(missing_docs, clippy::all, clippy::pedantic, rustdoc::all)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/_includes.rs"));
}

pub use generated::*;

pub mod json;

/// Encoded `FileDescriptorSet` of every redline proto and its imports, extension options included.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/redline_descriptor.bin"));

/// The task service, re-exported under a short path.
pub mod tasks {
    pub use crate::redline::tasks::v1::*;
}
