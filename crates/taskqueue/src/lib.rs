//! The Redis task model of redline: key layout, Lua transitions, typed operations.
