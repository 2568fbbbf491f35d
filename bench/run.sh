#!/usr/bin/env bash
# `make bench`: kvstore (1-node redb, 3-node redb, 3-node PostgreSQL) and etcd (Debian's
# etcd-server, 1 and 3 members) on this machine, all on loopback, driven by the same
# generator (kvbench) with the same settings, then one table with the ratios.
#
# Settings: CONNS (64), VALUE (100 bytes), KEYS (10000), DURATION (10s), WARMUP (3s),
# ROUNDS (3): every system is measured once per round, rounds one after another, so a
# drift in the machine's speed touches all systems alike; the table shows medians.
# SYSTEMS picks some of: etcd1 kv1 etcd3 kv3 pg3 (default: all). KVSTORE_BIN measures
# another kvstore binary (say, one built from an earlier commit) instead of this build.
# Large values: after the main runs, each round measures the 3-node systems (etcd3,
# kv3) again with each size of LARGE_VALUES ("65536 1048576" bytes; empty skips it),
# LARGE_CONNS (16) connections and LARGE_KEYS (64) keys, so reads find what was written.
# Listing and compare-and-set: after the writes and reads of the main runs, each system
# is measured with each workload of WORKLOADS ("list cas"; empty skips them): `list`
# reads pages of LIST_PAGE (100) pairs of the keys the writes left (kvstore: GET /kv?prefix=,
# etcd: /v3/kv/range with range_end), `cas` reads a key (a counter) and its revision and
# writes the counter plus one on the condition that the revision is unchanged, over
# CAS_KEYS (100) keys, retrying on a conflict (kvstore: If-Match, etcd: /v3/kv/txn
# comparing mod_revision).
# The nodes log with their defaults; LOG_LEVEL sets KV_LOG_LEVEL (bench/logs.sh compares
# the default with `error`).
# fsync stays on everywhere: kvstore's storage.sync_writes and etcd's defaults.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS="${CONNS:-64}" VALUE="${VALUE:-100}" KEYS="${KEYS:-10000}"
DURATION="${DURATION:-10s}" WARMUP="${WARMUP:-3s}" ROUNDS="${ROUNDS:-3}"
SYSTEMS="${SYSTEMS:-etcd1 kv1 etcd3 kv3 pg3}"
LARGE_VALUES="${LARGE_VALUES-65536 1048576}" LARGE_CONNS="${LARGE_CONNS:-16}" LARGE_KEYS="${LARGE_KEYS:-64}"
LOG_LEVEL="${LOG_LEVEL:-}"
WORKLOADS="${WORKLOADS-list cas}" LIST_PAGE="${LIST_PAGE:-100}" CAS_KEYS="${CAS_KEYS:-100}"
WORK="$(mktemp -d)"
RESULTS="$WORK/results.jsonl"
PIDS=()
PG_CONTAINER=""

log() { printf '== %s\n' "$*" >&2; }

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "$PG_CONTAINER" ] && docker rm -f "$PG_CONTAINER" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

stop_all() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
  # The data dirs (large values fill them quickly); the logs stay until the end.
  find "$WORK" -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
}

wait_http() { # URL: until it answers 200, up to 60 s
  for _ in $(seq 600); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "timed out waiting for $1" >&2; return 1
}

command -v etcd >/dev/null || {
  log "installing etcd-server"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server
}
log "building release binaries"
cargo build --release -q -p kvstore -p kvbench
KV="${KVSTORE_BIN:-target/release/kvstore}"
BENCH=target/release/kvbench

cpu_ticks() { # CPU time (clock ticks) the running servers have used so far
  local total=0 pid
  for pid in "${PIDS[@]}"; do total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done
  echo "$total"
}

ROUND=0

bench() { # NAME TARGET URLS WRITES VALUE_SIZE CONNECTIONS KEYS [OP: rw, list or cas]
  local name="$1" target="$2" urls="$3" writes="$4" value="$5" conns="$6" keys="$7" op="${8:-rw}"
  local before report server_cpu what
  what="$([ "$writes" = 1 ] && echo writes || echo reads)"
  [ "$op" = rw ] || what="$op"
  log "round $ROUND/$ROUNDS, $name, $value-byte values: $what"
  before="$(cpu_ticks)"
  # The generator runs as a child of Python, which adds its CPU time (getrusage) to the
  # report; the servers' CPU time over the same run comes from /proc.
  report="$(python3 -c 'import json, resource, subprocess, sys
out = subprocess.run(sys.argv[1:], check=True, capture_output=True, text=True).stdout
r = json.loads(out)
u = resource.getrusage(resource.RUSAGE_CHILDREN)
r["generator_cpu_s"] = u.ru_utime + u.ru_stime
print(json.dumps(r))' "$BENCH" --target "$target" --urls "$urls" --writes "$writes" --connections "$conns" \
    --keys "$keys" --value-size "$value" --duration "$DURATION" --warmup "$WARMUP" \
    --workload "$op" --page-size "$LIST_PAGE" --json)"
  server_cpu="$(( $(cpu_ticks) - before ))"
  python3 -c "import json,sys; r=json.loads(sys.argv[1]); r['name']='$name'; r['round']=$ROUND; r['workload']='$WORKLOAD'
if $COUNT_CPU: r['server_cpu_s']=$server_cpu / $(getconf CLK_TCK)
print(json.dumps(r))" "$report" >>"$RESULTS"
}

# Whether PIDS holds every server process of the system measured (not so for the
# PostgreSQL cluster: the database's own CPU time is not counted, so no CPU column).
COUNT_CPU=True

members() { # N: the initial members of an N-node kvstore cluster on loopback
  local out=() i
  for i in $(seq "$1"); do out+=("$i=http://127.0.0.1:1808$i|http://127.0.0.1:1908$i"); done
  (IFS=,; echo "${out[*]}")
}

# Which table a run belongs to: main or large (values).
WORKLOAD=main

# Counts the systems started, so each gets fresh data dirs.
RUN=0

start_kvstore() { # N BACKEND
  local n="$1" backend="$2" i initial
  RUN=$((RUN + 1))
  initial="$(members "$n")"
  for i in $(seq "$n"); do
    local env=(KV_RAFT_NODE_ID="$i" KV_SERVER_HOST=127.0.0.1 KV_SERVER_PORT="1808$i"
      KV_CLUSTER_RAFT_HOST=127.0.0.1 KV_CLUSTER_RAFT_PORT="1908$i" KV_CLUSTER_INITIAL_MEMBERS="$initial"
      KV_STORAGE_DATA_DIR="$WORK/kv-$backend-$n-$i-r$ROUND-$RUN" KV_RAFT_ELECTION_TIMEOUT=500ms
      KV_CLUSTER_INSECURE=true)
    if [ -n "$LOG_LEVEL" ]; then env+=(KV_LOG_LEVEL="$LOG_LEVEL"); fi
    if [ "$backend" = postgres ]; then
      env+=(KV_STORAGE_TYPE=database KV_DB_HOST=127.0.0.1 KV_DB_PORT="$PG_PORT" KV_DB_NAME="kv${ROUND}_$i"
        KV_DB_USER=postgres KV_DB_PASSWORD=bench KV_DB_SSL_MODE=disable KV_DB_MAX_CONNS=8)
    fi
    env "${env[@]}" "$KV" >"$WORK/kv-$backend-$n-$i-r$ROUND-$RUN.log" 2>&1 &
    PIDS+=($!)
  done
  for i in $(seq "$n"); do wait_http "http://127.0.0.1:1808$i/ready"; done
}

start_etcd() { # N
  local n="$1" i cluster=()
  RUN=$((RUN + 1))
  for i in $(seq "$n"); do cluster+=("e$i=http://127.0.0.1:2380$i"); done
  cluster="$(IFS=,; echo "${cluster[*]}")"
  for i in $(seq "$n"); do
    # A larger backend quota: a run of 1 MiB writes keeps every version (no compaction)
    # and would pass the 2 GiB default.
    etcd --name "e$i" --data-dir "$WORK/etcd-$n-$i-r$ROUND-$RUN" --quota-backend-bytes 8589934592 \
      --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
      --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
      --initial-cluster "$cluster" --initial-cluster-state new --log-level error \
      >"$WORK/etcd-$n-$i-r$ROUND-$RUN.log" 2>&1 &
    PIDS+=($!)
  done
  for i in $(seq "$n"); do wait_http "http://127.0.0.1:2379$i/health"; done
}

urls() { # PORT_PREFIX N
  local out=() i
  for i in $(seq "$2"); do out+=("http://127.0.0.1:$1$i"); done
  (IFS=,; echo "${out[*]}")
}

wants() { [[ " $SYSTEMS " == *" $1 "* ]]; }

measure() { # NAME TARGET URLS [VALUE_SIZE CONNECTIONS KEYS]: writes, then reads, then
  # (main workload) WORKLOADS on the keys the writes left, then the servers stop
  local value="${4:-$VALUE}" conns="${5:-$CONNS}" keys="${6:-$KEYS}" op
  bench "$1" "$2" "$3" 1 "$value" "$conns" "$keys"
  bench "$1" "$2" "$3" 0 "$value" "$conns" "$keys"
  if [ "$WORKLOAD" = main ]; then
    for op in $WORKLOADS; do
      case "$op" in
        list) bench "$1" "$2" "$3" 0 "$value" "$conns" "$keys" list ;;
        cas) bench "$1" "$2" "$3" 0 "$value" "$conns" "$CAS_KEYS" cas ;;
        *) echo "WORKLOADS: unknown workload $op (list, cas)" >&2; exit 2 ;;
      esac
    done
  fi
  stop_all
}

PG_PORT=""
if wants pg3; then
  PG_IMAGE="$(images/postgres-image.sh)"
  if [ -n "$PG_IMAGE" ]; then
    PG_PORT=25432
    PG_CONTAINER="$(docker run -d -e POSTGRES_PASSWORD=bench -p "$PG_PORT:5432" "$PG_IMAGE")"
    for _ in $(seq 300); do
      PGPASSWORD=bench psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -c 'select 1' >/dev/null 2>&1 && break
      sleep 0.2
    done
  else
    log "no Docker: skipping the PostgreSQL cluster"
  fi
fi

for ROUND in $(seq "$ROUNDS"); do
  if wants etcd1; then start_etcd 1; measure "etcd 1" etcd "$(urls 2379 1)"; fi
  if wants kv1; then start_kvstore 1 redb; measure "kvstore 1 redb" kvstore "$(urls 1808 1)"; fi
  if wants etcd3; then start_etcd 3; measure "etcd 3" etcd "$(urls 2379 3)"; fi
  if wants kv3; then start_kvstore 3 redb; measure "kvstore 3 redb" kvstore "$(urls 1808 3)"; fi
  if wants pg3 && [ -n "$PG_PORT" ]; then
    for i in 1 2 3; do
      PGPASSWORD=bench psql -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -c "CREATE DATABASE kv${ROUND}_$i"
    done
    start_kvstore 3 postgres
    COUNT_CPU=False
    measure "kvstore 3 postgres" kvstore "$(urls 1808 3)"
    COUNT_CPU=True
    # The next round starts from an empty server, not after this round's leftovers.
    for i in 1 2 3; do
      PGPASSWORD=bench psql -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -c "DROP DATABASE kv${ROUND}_$i"
    done
    PGPASSWORD=bench psql -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -c CHECKPOINT
  fi
  WORKLOAD=large
  for size in $LARGE_VALUES; do
    if wants etcd3; then
      start_etcd 3
      measure "etcd 3" etcd "$(urls 2379 3)" "$size" "$LARGE_CONNS" "$LARGE_KEYS"
    fi
    if wants kv3; then
      start_kvstore 3 redb
      measure "kvstore 3 redb" kvstore "$(urls 1808 3)" "$size" "$LARGE_CONNS" "$LARGE_KEYS"
    fi
  done
  WORKLOAD=main
done

[ -n "${KEEP_RESULTS:-}" ] && cp "$RESULTS" "$KEEP_RESULTS"
python3 bench/table.py "$RESULTS" "$CONNS" "$VALUE" "$DURATION" "$LARGE_CONNS" "$LARGE_KEYS" \
  "$LIST_PAGE" "$CAS_KEYS"
