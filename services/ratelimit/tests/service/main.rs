//! Service tests against real, private redis-server processes.

mod algorithms;
mod api;
mod envoy;
mod failure;
mod fixture;
mod persistence;
