//! End-to-end scenarios across processes and languages.

mod data;
mod python;
