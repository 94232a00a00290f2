//! Streaming market-data conversion between csv, txt, json, parquet and Arrow IPC.
