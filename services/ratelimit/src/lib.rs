//! RateLimitService: Redis-backed rate limits over gRPC and Envoy RLS v3.
