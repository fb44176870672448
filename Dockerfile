# syntax=docker/dockerfile:1
#
# orders-svc image: a Rust build stage and a small Debian runtime stage.
#   docker build -t orders-svc:local .
#   docker run --rm -p 8081:8081 -v "$PWD/my-orders.toml:/etc/orders-svc/orders.toml:ro" orders-svc:local
# The config must set http.addr = "0.0.0.0:8081" and point database.url and kafka.brokers
# at hosts the container can reach. compose.yaml runs it with PostgreSQL and Kafka beside it
# and deploy/compose.toml as the config.

ARG RUST_VERSION=1.95

# ---------------------------------------------------------------------------------------
# Build stage. Builder and runtime are both Debian bookworm, so the binary's glibc matches.
FROM rust:${RUST_VERSION}-bookworm AS builder

# rdkafka (default features) builds its bundled librdkafka from source with its own
# ./configure (bash) and `make libs`: that needs a C and a C++ compiler and GNU make.
# Its `libz` feature goes through libz-sys, which links the system zlib when pkg-config
# finds it (else it builds the zlib it bundles). No cmake: the cmake-build feature is off.
# Python is optional (only for librdkafka's linker script for the shared library).
# OpenSSL (for TLS and SASL to Kafka, and TLS to PostgreSQL) is built from source too
# (the `vendored` feature of openssl-sys), which needs perl and make.
# The rust:*-bookworm image already has most of these; they are listed to say what is needed.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc g++ make perl pkg-config zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# The whole context (trimmed by .dockerignore): sql/ and assets/ are embedded at compile time,
# and every target the manifest names must exist for cargo to load it.
COPY . .

# The registry and target dir live in cache mounts, so a source change recompiles only this
# crate, not librdkafka and the other dependencies. The binary is copied out of the mount,
# which is not part of the image. sharing=locked: compose may build two services at once.
RUN --mount=type=cache,id=orders-svc-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=orders-svc-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=orders-svc-target,target=/src/target,sharing=locked \
    cargo build --release --locked \
    && install -D -m 0755 target/release/orders-svc /out/orders-svc

# ---------------------------------------------------------------------------------------
# Runtime stage: the binary, CA certificates (the system's roots for `sslmode=verify-full`
# without `sslrootcert`, and for Kafka over TLS without `ssl.ca.location`), and an
# unprivileged user with a fixed uid.
FROM debian:bookworm-slim AS runtime

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --gid 10001 orders-svc \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin orders-svc

COPY --from=builder /out/orders-svc /usr/local/bin/orders-svc

USER 10001:10001

# http.addr in the config must be 0.0.0.0:8081 in a container (deploy/compose.toml has it).
EXPOSE 8081

ENTRYPOINT ["/usr/local/bin/orders-svc"]
CMD ["--config", "/etc/orders-svc/orders.toml"]
