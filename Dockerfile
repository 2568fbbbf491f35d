# kvstore: a release build in a Rust image, run on Debian as a non-root user.
#
# The base images are arguments. With a registry, the defaults (the official images).
# Without one, images/build.sh passes stand-ins built from Debian's packages and this
# machine's Rust toolchain, with the crates vendored into the Rust stand-in (see README,
# "The dev stack"). It builds with the classic builder too (no BuildKit features).
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src

# Dependencies first, from the workspace's manifests and placeholder sources: this layer
# is rebuilt only when a manifest or Cargo.lock changes, not when the code does. Every
# workspace member's manifest is needed to load the workspace (images/check_context.py
# checks that each one is copied here and below).
COPY Cargo.toml Cargo.lock ./
COPY service/Cargo.toml service/
COPY integration-tests/Cargo.toml integration-tests/
COPY testfs/Cargo.toml testfs/
COPY bench/kvbench/Cargo.toml bench/kvbench/
RUN mkdir -p service/src integration-tests/src testfs/src bench/kvbench/src \
 && echo 'fn main() {}' > service/src/main.rs \
 && echo 'fn main() {}' > bench/kvbench/src/main.rs \
 && touch service/src/lib.rs integration-tests/src/lib.rs testfs/src/lib.rs \
 && cargo build --release --locked -p kvstore --bin kvstore

# Then the sources. COPY keeps the files' times, which can be older than the
# placeholders' build, so touch them for cargo to see the change.
COPY migrations migrations
# The built-in defaults are config/server.yaml, compiled into the binary.
COPY config/server.yaml config/server.yaml
COPY service service
COPY integration-tests integration-tests
COPY testfs testfs
COPY bench/kvbench bench/kvbench
RUN find service/src integration-tests/src testfs/src bench/kvbench/src -name '*.rs' -exec touch {} + \
 && cargo build --release --locked -p kvstore --bin kvstore \
 && strip target/release/kvstore

# No CA bundle: kvstore trusts only the CA file its configuration names (tls.ca_file).
FROM ${RUNTIME_IMAGE}
RUN useradd --system --uid 10001 --home-dir /var/lib/kvstore --create-home kvstore
COPY --from=build /src/target/release/kvstore /usr/local/bin/kvstore
USER kvstore
WORKDIR /var/lib/kvstore
ENV KV_STORAGE_DATA_DIR=/var/lib/kvstore/data
EXPOSE 8080 9001
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/kvstore", "health"]
ENTRYPOINT ["/usr/local/bin/kvstore"]
