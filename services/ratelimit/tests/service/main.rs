//! Service tests against real, private redis-server processes.

mod algorithms;
mod api;
mod cluster;
mod envoy;
mod failure;
mod fixture;
mod persistence;
mod stream;
