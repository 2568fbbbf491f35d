#!/usr/bin/env bash
# Prints the PostgreSQL image the tests should use, making sure it exists locally:
# the official postgres:15 where a registry is reachable, otherwise kvstore-postgres:15
# built from Debian's packages. Prints nothing when there is no Docker daemon (the tests
# then report themselves skipped, or fail if KV_REQUIRE_DOCKER is set).
set -euo pipefail
cd "$(dirname "$0")"

if [ -n "${KV_TEST_POSTGRES_IMAGE:-}" ]; then
  echo "$KV_TEST_POSTGRES_IMAGE"
  exit 0
fi
if ! docker info >/dev/null 2>&1; then
  echo "no Docker daemon: the PostgreSQL tests will be skipped" >&2
  exit 0
fi
official=postgres:15
if docker image inspect "$official" >/dev/null 2>&1 ||
   timeout 120 docker pull -q "$official" >/dev/null 2>&1; then
  echo "$official"
  exit 0
fi
echo "no registry reachable: using kvstore-postgres:15 built from Debian's packages" >&2
./build.sh postgres >&2  # stdout carries only the image name
echo kvstore-postgres:15
