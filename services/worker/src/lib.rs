//! Worker processes that run registered redline tasks with leases, retries and timeouts.
