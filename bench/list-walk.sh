#!/usr/bin/env bash
# `make list-walk`: one release node on redb in a temporary directory, KEYS (1000000)
# keys of VALUE (100) bytes loaded through the API, then listed page by page (LIMIT,
# 1000 a page) by `kvbench walk`, which checks that every key came back exactly once,
# in order, with its value, and samples the node's RSS (/proc/<pid>/status) before and
# during the walk. Exits non-zero if a key is missing, repeated or out of order, or if
# the RSS grew by MAX_RSS_GROWTH_MIB (64) or more. PORT (18480) is the node's API port;
# KVSTORE_BIN measures another kvstore binary; JSON=1 prints kvbench's JSON report.
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS="${KEYS:-1000000}" VALUE="${VALUE:-100}" LIMIT="${LIMIT:-1000}"
MAX_RSS_GROWTH_MIB="${MAX_RSS_GROWTH_MIB:-64}" PORT="${PORT:-18480}"
WORK="$(mktemp -d)"
NODE=""

cleanup() {
  if [ -n "$NODE" ]; then kill "$NODE" 2>/dev/null || true; wait "$NODE" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== building release binaries" >&2
cargo build --release -q -p kvstore -p kvbench
KV="${KVSTORE_BIN:-target/release/kvstore}"

echo "== starting one node on redb in $WORK (API 127.0.0.1:$PORT)" >&2
KV_RAFT_NODE_ID=1 KV_SERVER_HOST=127.0.0.1 KV_SERVER_PORT="$PORT" \
  KV_CLUSTER_RAFT_HOST=127.0.0.1 KV_CLUSTER_RAFT_PORT="$((PORT + 1000))" \
  KV_STORAGE_DATA_DIR="$WORK/data" KV_CLUSTER_INSECURE=true \
  "$KV" >"$WORK/kv.log" 2>&1 &
NODE=$!
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1 && break
  kill -0 "$NODE" 2>/dev/null || { echo "the node exited:" >&2; tail -20 "$WORK/kv.log" >&2; exit 2; }
  sleep 0.1
done
curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null || { echo "the node is not ready after 60 s" >&2; exit 2; }

echo "== loading $KEYS keys, then walking them $LIMIT a page" >&2
status=0
target/release/kvbench walk --url "http://127.0.0.1:$PORT" --pid "$NODE" --keys "$KEYS" \
  --value-size "$VALUE" --limit "$LIMIT" --max-rss-growth-mib "$MAX_RSS_GROWTH_MIB" \
  ${JSON:+--json} || status=$?
echo "== $(uname -sr), $(nproc) cores; kvstore $(git rev-parse --short HEAD 2>/dev/null || echo '?')" >&2
exit "$status"
