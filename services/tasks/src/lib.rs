//! TaskService: the gRPC front of the redline task queue.
