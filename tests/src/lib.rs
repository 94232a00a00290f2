//! End-to-end tests of the redline suite against a real Redis.
