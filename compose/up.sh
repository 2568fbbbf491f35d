#!/usr/bin/env bash
# `make up`: starts the dev stack and waits until the cluster serves.
# With a registry: the official images, kvstore built from ../Dockerfile, plus Grafana and
# Tempo. Without one: kvstore built from the same Dockerfile on stand-in base images, and
# PostgreSQL and Prometheus from Debian's packages (images/build.sh); no Grafana or
# Tempo, which Debian does not package.
set -euo pipefail
cd "$(dirname "$0")/.."
. compose/lib.sh

if timeout 120 docker pull -q grafana/grafana:11.2.0 >/dev/null 2>&1; then
  echo "Container registry reachable: starting the full stack (kv1-kv3, PostgreSQL, Prometheus, Grafana, Tempo)."
  export KV_OTLP_ENDPOINT=http://tempo:4317
  compose --profile full up -d --build
else
  echo "No container registry reachable: starting kv1-kv3, PostgreSQL and Prometheus from images built here from Debian's packages and this machine's Rust toolchain; Grafana and Tempo need a registry and are left out."
  images/build.sh postgres prometheus kvstore
  export KV_IMAGE=kvstore:local KV_POSTGRES_IMAGE=kvstore-postgres:15 KV_PROMETHEUS_IMAGE=kvstore-prometheus:2.42
  compose up -d
fi

for port in 8081 8082 8083; do
  wait_for "node on :$port to be ready" 180 curl -sf "http://127.0.0.1:$port/ready"
done
echo "kvstore is up: API http://localhost:8081 http://localhost:8082 http://localhost:8083 (Swagger UI at /docs), Prometheus http://localhost:9090"
