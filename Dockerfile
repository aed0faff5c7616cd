# syntax=docker/dockerfile:1
# The caas workload image: one `caas` binary for every workload (the operator sets the
# subcommand: `caas gateway`, `caas pipeline`, ...). Build from the workspace root:
#   docker build -t ghcr.io/caas-dev/caas:0.1.0 .
# Multi-stage: a Rust builder (with what rdkafka's cmake build of librdkafka needs), then
# distroless (glibc, no shell) running as uid 65532, which is what the operator's restricted
# pod security context expects (runAsNonRoot, read-only root filesystem).

FROM rust:1.95-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake libcurl4-openssl-dev libsasl2-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p caas \
    && cp target/release/caas /caas

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /caas /usr/local/bin/caas
USER 65532:65532
# 8080 public API, /health, /ready; 8081 internal (tenant admin API); 9090 /metrics.
EXPOSE 8080 8081 9090
# No CMD: the operator and docker-compose.yml pass the subcommand (`gateway`, `pipeline`, ...).
# Without one the binary runs `standalone`, which listens on 127.0.0.1 only (not reachable
# from outside the container): pass `standalone --listen 0.0.0.0:8080 ...` to try it that way.
ENTRYPOINT ["/usr/local/bin/caas"]
