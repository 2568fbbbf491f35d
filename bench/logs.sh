#!/usr/bin/env bash
# What the default logging costs: write throughput of a 3-node redb cluster (release
# build, on loopback) with the default logging settings, against the same run with
# KV_LOG_LEVEL=error, measured with wrk (PUTs to the leader, 100-byte values).
#
# Settings: ROUNDS (3), CONNS (64), DURATION (10s), WARMUP (3s), KEYS (10000),
# PORT_BASE (28180: API ports PORT_BASE+1..3, Raft ports PORT_BASE+1001..1003),
# KVSTORE_BIN (target/release/kvstore, built if missing). The two settings alternate
# within each round (default, then error), each on a fresh cluster, so a drift in the
# machine's speed touches both alike; the summary gives each round's ratio and the
# medians. Needs wrk (apt-get install wrk), curl and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${ROUNDS:-3}" CONNS="${CONNS:-64}" DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-3s}" KEYS="${KEYS:-10000}" PORT_BASE="${PORT_BASE:-28180}"
WORK="$(mktemp -d)"
PIDS=()

log() { printf '== %s\n' "$*" >&2; }

stop_all() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
trap 'stop_all; rm -rf "$WORK"' EXIT

command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
KV="${KVSTORE_BIN:-target/release/kvstore}"
if [ -z "${KVSTORE_BIN:-}" ]; then
  log "building the release binary"
  cargo build --release -q -p kvstore --bin kvstore
fi

api_port() { echo $((PORT_BASE + $1)); }
raft_port() { echo $((PORT_BASE + 1000 + $1)); }

start_cluster() { # DIR [VAR=VALUE...]: three nodes with the default logging settings plus these
  local dir="$1" i members=() ; shift
  for i in 1 2 3; do
    members+=("$i=http://127.0.0.1:$(api_port "$i")|http://127.0.0.1:$(raft_port "$i")")
  done
  for i in 1 2 3; do
    env -i PATH="$PATH" KV_RAFT_NODE_ID="$i" KV_SERVER_HOST=127.0.0.1 KV_SERVER_PORT="$(api_port "$i")" \
      KV_CLUSTER_RAFT_HOST=127.0.0.1 KV_CLUSTER_RAFT_PORT="$(raft_port "$i")" \
      KV_CLUSTER_INITIAL_MEMBERS="$(IFS=,; echo "${members[*]}")" \
      KV_STORAGE_DATA_DIR="$dir/node$i" KV_RAFT_ELECTION_TIMEOUT=500ms KV_CLUSTER_INSECURE=true "$@" \
      "$KV" >"$dir/node$i.log" 2>&1 &
    PIDS+=($!)
  done
  for i in 1 2 3; do
    for _ in $(seq 600); do
      curl -sf "http://127.0.0.1:$(api_port "$i")/ready" >/dev/null 2>&1 && break
      sleep 0.1
    done
    curl -sf "http://127.0.0.1:$(api_port "$i")/ready" >/dev/null \
      || { echo "node $i is not ready; its log:" >&2; tail -n 20 "$dir/node$i.log" >&2; exit 1; }
  done
}

leader_url() {
  curl -sf "http://127.0.0.1:$(api_port 1)/status" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["leader"]["api_addr"])'
}

cat >"$WORK/put.lua" <<EOF
local n = 0
local body = '{"value": "' .. string.rep("x", 100) .. '"}'
request = function()
  n = n + 1
  return wrk.format("PUT", "/kv/bench-" .. (n % $KEYS), {["Content-Type"] = "application/json"}, body)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout))
end
EOF

RESULTS="$WORK/results.txt"
measure() { # NAME [VAR=VALUE...]
  local name="$1" dir="$WORK/$1-r$ROUND" url out; shift
  mkdir -p "$dir"
  start_cluster "$dir" "$@"
  url="$(leader_url)"
  log "round $ROUND/$ROUNDS, $name: $CONNS connections against the leader $url"
  wrk -t2 -c"$CONNS" -d"$WARMUP" -s "$WORK/put.lua" "$url" >/dev/null
  out="$(wrk -t2 -c"$CONNS" -d"$DURATION" -s "$WORK/put.lua" "$url" | grep '^RESULT')"
  echo "$ROUND $name $out" >>"$RESULTS"
  stop_all
}

for ROUND in $(seq "$ROUNDS"); do
  measure default
  measure error KV_LOG_LEVEL=error
done

python3 - "$RESULTS" "$CONNS" "$DURATION" <<'EOF'
import statistics, sys
rounds = {}
for line in open(sys.argv[1]):
    rnd, name, _, requests, micros, errors = line.split()
    rate = int(requests) / (int(micros) / 1e6)
    rounds.setdefault(int(rnd), {})[name] = (rate, int(errors))
print(f"3 nodes (redb, fsync on), wrk PUTs to the leader, {sys.argv[2]} connections, "
      f"{sys.argv[3]} per run, 100-byte values")
print("| round | default writes/s | KV_LOG_LEVEL=error writes/s | default / error |")
print("|---|---|---|---|")
ratios = []
for rnd in sorted(rounds):
    d, e = rounds[rnd]["default"], rounds[rnd]["error"]
    ratios.append(d[0] / e[0])
    print(f"| {rnd} | {d[0]:,.0f} | {e[0]:,.0f} | {ratios[-1]:.3f} |")
    if d[1] or e[1]:
        print(f"|   | errors: {d[1]} | errors: {e[1]} | |")
med = lambda name: statistics.median(rounds[r][name][0] for r in rounds)
print(f"| median | {med('default'):,.0f} | {med('error'):,.0f} | "
      f"{med('default') / med('error'):.3f} (median of the rounds' ratios: {statistics.median(ratios):.3f}) |")
EOF
