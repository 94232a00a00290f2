//! The `redline` command.
fn main() {}
