# syntax=docker/dockerfile:1
# One image with every redline binary: redline-tasks, redline-worker, redline-ratelimit, redline-gateway and
# the redline CLI, in /usr/local/bin. Pick one with the container's command, e.g.
#   docker run --rm -p 50051:50051 redline redline-tasks --redis-url redis://host:6379/0
# Build: docker build -t redline:dev .   (BuildKit, for the cache mounts)

# --- build --------------------------------------------------------------------------------------------------
# rust-toolchain.toml pins 1.95.0; rustup in this image honours it. Protos compile with protox: no protoc.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target caches survive between builds; the binaries are copied out of the cache mount in
# the same step, since a cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        -p redline-tasks -p redline-worker -p redline-ratelimit -p redline-gateway -p redline \
 && mkdir -p /out /staging/data \
 && cp target/release/redline-tasks target/release/redline-worker target/release/redline-ratelimit \
       target/release/redline-gateway target/release/redline /out/

# --- runtime ------------------------------------------------------------------------------------------------
# glibc and libgcc only, no shell, nonroot user 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
# An empty data directory owned by the nonroot user, so a fresh named volume mounted on it is writable.
COPY --from=build --chown=65532:65532 /staging/data /home/nonroot/data
USER 65532:65532
# The nonroot user's home: a worker's default data directory is ./data under it (set REDLINE_DATA_DIR and
# mount a volume in deployments).
WORKDIR /home/nonroot
# TaskService gRPC, RateLimitService gRPC, REST gateway, admin HTTP (/metrics, /healthz, /readyz).
EXPOSE 50051 50052 8080 9464
CMD ["/usr/local/bin/redline", "--help"]
