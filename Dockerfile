# kvstore: build with the official Rust image, run on Debian slim as a non-root user.
# (Without a registry, `make up` builds images/kvstore instead, from Debian's packages.)
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY service ./service
COPY migrations ./migrations
RUN cargo build --release --locked -p kvstore && strip target/release/kvstore

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/kvstore --create-home kvstore
COPY --from=build /src/target/release/kvstore /usr/local/bin/kvstore
USER kvstore
WORKDIR /var/lib/kvstore
ENV KV_STORAGE_DATA_DIR=/var/lib/kvstore/data
EXPOSE 8080 9001
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/kvstore", "health"]
ENTRYPOINT ["/usr/local/bin/kvstore"]
