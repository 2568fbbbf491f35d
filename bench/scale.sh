#!/usr/bin/env bash
# `make bench-scale`: kvstore (3 nodes on redb) against etcd (Debian's etcd-server 3.4,
# 3 members) at scale, on this machine, all on loopback, driven by the same generator
# (kvbench); then one Markdown table (bench/scale_table.py): a row per scenario with
# etcd's figure, kvstore's, the ratio and the goal.
#
# Each round measures, etcd first and then kvstore:
#  - a fresh cluster: closed-loop writes (CONNS connections, VALUE-byte values, EMPTY_KEYS
#    keys), the empty store's write rate; etcd's is its maximum write rate, and then
#    both systems run an open loop of writes at half of it (`--rate`), for p99 and p99.9;
#  - a fresh cluster: BIG_KEYS keys of BIG_VALUE bytes preloaded, then closed-loop
#    writes of them over BIG_CONNS connections: rate and p99;
#  - a fresh cluster: N keys of VALUE bytes preloaded (`bench-0` ...), then closed-loop
#    writes over all N keys (the rate against the empty store's), YCSB A and B
#    (Zipfian over the N keys), the RSS of every node (/proc/<pid>/status VmRSS), the
#    restart of one follower (SIGTERM, then started again, timed until kvstore's
#    `/ready` or etcd's `/health` answers 200), a new empty member joining (kvstore:
#    started with cluster.bootstrap false, `POST /cluster/learners`, until its
#    `applied_index` reaches the leader's; etcd: `etcdctl member add`, started with
#    --initial-cluster-state existing, until its key count matches), the new member
#    removed again, then OVERWRITES passes over every key and the bytes on disk of each
#    original node's data dir (`du`, blocks allocated) per byte of live keys and values,
#    once the sizes stop changing (etcd after `etcdctl compact` and `defrag`);
#  - kvstore with 3 nodes on PostgreSQL (one server in Docker, a database per node,
#    images/postgres-image.sh): the empty store's write rate, against etcd's.
#
# Sizes: SCALE=reduced (default: N=100000, BIG_KEYS=1000, 5 s runs, 1 round) or
# SCALE=full (N=1000000, BIG_KEYS=10000, 10 s runs, 2 rounds); each can be set alone:
# N, BIG_KEYS, BIG_VALUE (65536), DURATION, WARMUP (2s), ROUNDS (the table shows
# medians), CONNS (64), VALUE (100), EMPTY_KEYS (10000), BIG_CONNS (16), OVERWRITES (10),
# PRELOAD_BATCH (100 keys a transaction), SETTLE (3: one-second samples of unchanged
# disk use that count as settled; at most SETTLE_MAX, 120 s). PG=0 skips the PostgreSQL
# row. KVSTORE_BIN measures another kvstore binary. KEEP_RESULTS=file keeps the raw
# results (JSON lines). Ports: kvstore API 2828x and Raft 2928x, etcd client 2479x and
# peer 2480x (x = node), PostgreSQL 25433.
# fsync stays on everywhere: kvstore's storage.sync_writes and etcd's defaults.
set -eEuo pipefail
cd "$(dirname "$0")/.."

SCALE="${SCALE:-reduced}"
case "$SCALE" in
  reduced) d_n=100000 d_big=1000 d_duration=5s d_rounds=1 ;;
  full) d_n=1000000 d_big=10000 d_duration=10s d_rounds=2 ;;
  *) echo "SCALE must be reduced or full, not $SCALE" >&2; exit 2 ;;
esac
N="${N:-$d_n}" BIG_KEYS="${BIG_KEYS:-$d_big}" BIG_VALUE="${BIG_VALUE:-65536}"
DURATION="${DURATION:-$d_duration}" WARMUP="${WARMUP:-2s}" ROUNDS="${ROUNDS:-$d_rounds}"
CONNS="${CONNS:-64}" VALUE="${VALUE:-100}" EMPTY_KEYS="${EMPTY_KEYS:-10000}"
BIG_CONNS="${BIG_CONNS:-16}" OVERWRITES="${OVERWRITES:-10}" PRELOAD_BATCH="${PRELOAD_BATCH:-100}"
SETTLE="${SETTLE:-3}" SETTLE_MAX="${SETTLE_MAX:-120}" PG="${PG:-1}"

KV_API=2828 KV_RAFT=2928 ETCD_CLIENT=2479 ETCD_PEER=2480 PG_PORT=25433
WORK="$(mktemp -d)"
RESULTS="$WORK/results.jsonl"
declare -A PID=()    # running servers by name (kv1.., etcd1..)
PG_CONTAINER=""
STEP="starting"
ROUND=0
started_at="$(date +%s)"

log() { printf '== [%ds] %s\n' "$(($(date +%s) - started_at))" "$*" >&2; }
step() { STEP="round $ROUND: $*"; log "$STEP"; }

alive() { # PID: running (not a zombie)
  kill -0 "$1" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}

cleanup() {
  local pid
  for pid in "${PID[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PID[@]}"; do
    # SIGTERM lets the servers close their stores; SIGKILL whatever is left after 20 s.
    for _ in $(seq 200); do alive "$pid" || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  [ -n "$PG_CONTAINER" ] && docker rm -f "$PG_CONTAINER" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
failed() {
  local status=$?
  trap - ERR
  # In a command substitution: the script itself reports it, once.
  [ "$BASH_SUBSHELL" -eq 0 ] || exit "$status"
  echo "bench-scale FAILED (exit $status) at: $STEP" >&2
  mkdir -p target/bench-scale-failed
  cp "$WORK"/*.log target/bench-scale-failed/ 2>/dev/null || true
  echo "the servers' and the generator's logs are in target/bench-scale-failed/" >&2
  exit "$status"
}
trap failed ERR
trap 'log "interrupted at: $STEP"; exit 130' INT TERM

die() { echo "$*" >&2; return 1; }

command -v etcd >/dev/null || {
  log "installing etcd-server"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server
}
command -v etcdctl >/dev/null || {
  log "installing etcd-client (etcdctl)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-client
}
export ETCDCTL_API=3
log "building release binaries"
cargo build --release -q -p kvstore -p kvbench
KV="${KVSTORE_BIN:-target/release/kvstore}"
BENCH=target/release/kvbench

for port in "$KV_API"{1..4} "$KV_RAFT"{1..4} "$ETCD_CLIENT"{1..4} "$ETCD_PEER"{1..4} "$PG_PORT"; do
  if ss -ltnH "sport = :$port" | grep -q .; then
    echo "port $port is in use; bench-scale needs ports 2828x, 2928x, 2479x, 2480x and $PG_PORT" >&2
    exit 2
  fi
done

now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 3))" "$1" "$2"; }

wait_http() { # URL NAME [SECONDS]: until it answers 200, while server NAME runs
  local deadline=$(($(date +%s) + ${3:-60}))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    curl -sf -o /dev/null --max-time 2 "$1" && return 0
    alive "${PID[$2]}" || die "$2 exited before $1 answered 200; its log ends: $(tail -5 "$WORK/$2.log")"
    sleep 0.02
  done
  die "timed out waiting for $1 to answer 200"
}

stop_one() { # NAME: SIGTERM, and wait (60 s at most) until it has exited
  local name="$1" pid="${PID[$1]}"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 600); do alive "$pid" || break; sleep 0.1; done
  alive "$pid" && die "$name (pid $pid) did not exit within 60 s of SIGTERM"
  wait "$pid" 2>/dev/null || true
  unset "PID[$name]"
}

stop_all() { # every server, then their data dirs (the logs stay until the end)
  local name
  for name in "${!PID[@]}"; do stop_one "$name"; done
  find "$WORK" -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
}

record() { # STEP SYSTEM JSON
  printf '{"round":%d,"system":"%s","step":"%s","value":%s}\n' "$ROUND" "$2" "$1" "$3" >>"$RESULTS"
}

json_get() { # JSON PYTHON_EXPR over `r`
  python3 -c "import json, sys; r = json.loads(sys.argv[1]); print($2)" "$1"
}

# --- kvstore ------------------------------------------------------------------------

kv_members() {
  local out=() i
  for i in 1 2 3; do out+=("$i=http://127.0.0.1:$KV_API$i|http://127.0.0.1:$KV_RAFT$i"); done
  (IFS=,; echo "${out[*]}")
}

kv_start_node() { # ID [extra VAR=value ...]
  local i="$1"; shift
  env KV_RAFT_NODE_ID="$i" KV_SERVER_HOST=127.0.0.1 KV_SERVER_PORT="$KV_API$i" \
    KV_CLUSTER_RAFT_HOST=127.0.0.1 KV_CLUSTER_RAFT_PORT="$KV_RAFT$i" \
    KV_STORAGE_DATA_DIR="$WORK/kv$i" KV_STORAGE_QUOTA_BYTES=8589934592 \
    KV_RAFT_ELECTION_TIMEOUT=500ms KV_CLUSTER_INSECURE=true \
    "$@" "$KV" >>"$WORK/kv$i.log" 2>&1 &
  PID[kv$i]=$!
}

KV_BACKEND=()  # extra settings of every node (PostgreSQL)
kv_start() {
  local i
  for i in 1 2 3; do
    kv_start_node "$i" KV_CLUSTER_INITIAL_MEMBERS="$(kv_members)" "${KV_BACKEND[@]/\%i/$i}"
  done
  for i in 1 2 3; do wait_http "http://127.0.0.1:$KV_API$i/ready" "kv$i"; done
}

kv_status() { curl -sf --max-time 5 "http://127.0.0.1:$KV_API$1/status"; }

kv_follower() { # a node that does not lead
  local leader i
  leader="$(json_get "$(kv_status 1)" 'r["leader_id"]')"
  for i in 1 2 3; do [ "$i" != "$leader" ] && { echo "$i"; return; }; done
}

# --- etcd ---------------------------------------------------------------------------

ETCD_CLUSTER=""
etcd_start_member() { # ID STATE
  local i="$1"
  # A larger backend quota (kvstore gets the same): OVERWRITES passes keep every
  # version until the compaction.
  etcd --name "e$i" --data-dir "$WORK/etcd$i" --quota-backend-bytes 8589934592 \
    --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT$i" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT$i" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER$i" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER$i" \
    --initial-cluster "$ETCD_CLUSTER" --initial-cluster-state "$2" --log-level error \
    >>"$WORK/etcd$i.log" 2>&1 &
  PID[etcd$i]=$!
}

etcd_start() {
  local i
  ETCD_CLUSTER="e1=http://127.0.0.1:${ETCD_PEER}1,e2=http://127.0.0.1:${ETCD_PEER}2,e3=http://127.0.0.1:${ETCD_PEER}3"
  for i in 1 2 3; do etcd_start_member "$i" new; done
  for i in 1 2 3; do wait_http "http://127.0.0.1:$ETCD_CLIENT$i/health" "etcd$i"; done
}

etcd_post() { # MEMBER PATH JSON
  curl -sf --max-time 10 -X POST -d "$3" "http://127.0.0.1:$ETCD_CLIENT$1$2"
}

etcd_follower() {
  local i s
  for i in 1 2 3; do
    s="$(etcd_post "$i" /v3/maintenance/status '{}')"
    [ "$(json_get "$s" 'r["header"]["member_id"] != r["leader"]')" = True ] && { echo "$i"; return; }
  done
  die "no etcd follower found"
}

# The keys bench-0 ... (range_end: "bench." is the first key after every "bench-" key).
ETCD_BENCH_RANGE="\"key\":\"$(printf bench- | base64)\",\"range_end\":\"$(printf bench. | base64)\""
etcd_count() { # MEMBER: the bench- keys in its own copy (serializable)
  json_get "$(etcd_post "$1" /v3/kv/range "{$ETCD_BENCH_RANGE,\"count_only\":true,\"serializable\":true}")" \
    'int(r.get("count", 0))'
}

etcdctl_all() { etcdctl --endpoints "$(urls etcd)" --command-timeout 300s "$@"; }

# --- both ---------------------------------------------------------------------------

urls() { # SYSTEM: the client URLs of the 3 original members
  local port out=() i
  port="$([ "$1" = etcd ] && echo "$ETCD_CLIENT" || echo "$KV_API")"
  for i in 1 2 3; do out+=("http://127.0.0.1:$port$i"); done
  (IFS=,; echo "${out[*]}")
}

start() { if [ "$1" = etcd ]; then etcd_start; else kv_start; fi; }

gen() { # STEP SYSTEM ARGS...: one kvbench run, its JSON report recorded
  local name="$1" system="$2" report; shift 2
  report="$("$BENCH" --target "$([ "$system" = etcd ] && echo etcd || echo kvstore)" \
    --urls "$(urls "${system%% *}")" --json "$@" 2>>"$WORK/kvbench.log")" ||
    die "kvbench failed ($system, $name): $(tail -3 "$WORK/kvbench.log")"
  record "$name" "$system" "$report"
  LAST_REPORT="$report"
}

preload() { # SYSTEM KEYS VALUE_SIZE [STEP]: keys bench-0 .. bench-<KEYS-1>, written once
  gen "${4:-preload}" "$1" --preload "$2" --preload-batch "$PRELOAD_BATCH" --value-size "$3" \
    --connections "$CONNS" --duration 0s
}

load() { # STEP SYSTEM ARGS...: CONNS connections, VALUE-byte values (closed loop unless --rate)
  gen "$1" "$2" --connections "$CONNS" --value-size "$VALUE" --duration "$DURATION" \
    --warmup "$WARMUP" "${@:3}"
}

rss() { # SYSTEM: VmRSS of each original node, bytes, as a JSON list
  local out=() i pid
  for i in 1 2 3; do
    pid="${PID[$([ "$1" = etcd ] && echo etcd || echo kv)$i]}"
    out+=("$(($(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status") * 1024))")
  done
  (IFS=,; echo "[${out[*]}]")
}

disk_sizes() { # SYSTEM: bytes allocated under each original node's data dir
  local i out=()
  for i in 1 2 3; do out+=("$(du -s -B1 "$WORK/$([ "$1" = etcd ] && echo etcd || echo kv)$i" | cut -f1)"); done
  echo "${out[*]}"
}

settle() { # SYSTEM: until the data dirs' sizes stay unchanged for SETTLE samples a second apart
  local last="" same=0 sizes waited=0
  while [ "$same" -lt "$SETTLE" ] && [ "$waited" -lt "$SETTLE_MAX" ]; do
    sleep 1; waited=$((waited + 1))
    sizes="$(disk_sizes "$1")"
    if [ "$sizes" = "$last" ]; then same=$((same + 1)); else same=0; last="$sizes"; fi
  done
  SETTLED_AFTER="$waited"
  SIZES="$last"
  [ "$same" -ge "$SETTLE" ] || log "WARNING: $1's data dirs were still changing after $SETTLE_MAX s; measured as they were"
}

restart_follower() { # SYSTEM
  local sys="$1" i t0 t1
  if [ "$sys" = etcd ]; then
    i="$(etcd_follower)"
    stop_one "etcd$i"
    t0="$(now)"
    etcd_start_member "$i" new
    wait_http "http://127.0.0.1:$ETCD_CLIENT$i/health" "etcd$i" 120
  else
    i="$(kv_follower)"
    stop_one "kv$i"
    t0="$(now)"
    kv_start_node "$i" KV_CLUSTER_INITIAL_MEMBERS="$(kv_members)"
    wait_http "http://127.0.0.1:$KV_API$i/ready" "kv$i" 120
  fi
  t1="$(now)"
  record restart "$sys" "{\"seconds\":$(elapsed "$t0" "$t1"),\"node\":$i,\"signal\":\"SIGTERM\"}"
}

join_member() { # SYSTEM: a 4th, empty member joins; timed until it has caught up
  local sys="$1" t0 t1 target code deadline
  deadline=$(($(date +%s) + 600))
  if [ "$sys" = etcd ]; then
    target="$(etcd_count 1)"
    # etcd refuses a new member ("unhealthy cluster") until every member has been
    # connected for 5 s, as after the restart above: the clock starts at the attempt
    # that is taken (a refused one changes nothing).
    until t0="$(now)"; etcdctl_all member add e4 --peer-urls "http://127.0.0.1:${ETCD_PEER}4" \
      >>"$WORK/etcdctl.log" 2>&1; do
      [ "$(date +%s)" -lt "$deadline" ] || die "etcdctl member add failed for 600 s: $(tail -3 "$WORK/etcdctl.log")"
      sleep 0.5
    done
    ETCD_CLUSTER="$ETCD_CLUSTER,e4=http://127.0.0.1:${ETCD_PEER}4"
    etcd_start_member 4 existing
    until [ "$(etcd_count 4 2>/dev/null || echo -1)" = "$target" ]; do
      [ "$(date +%s)" -lt "$deadline" ] || die "the new etcd member has not caught up in 600 s"
      alive "${PID[etcd4]}" || die "the new etcd member exited: $(tail -3 "$WORK/etcd4.log")"
      sleep 0.05
    done
    t1="$(now)"
    record join etcd "{\"seconds\":$(elapsed "$t0" "$t1"),\"keys\":$target}"
    # Back to 3 members for what follows.
    etcdctl_all member remove "$(etcdctl_all member list | awk -F', ' '$3 == "e4" {print $1}')" \
      >>"$WORK/etcdctl.log"
    stop_one etcd4
  else
    t0="$(now)"
    kv_start_node 4 KV_CLUSTER_BOOTSTRAP=false
    wait_http "http://127.0.0.1:${KV_API}4/health" kv4
    # It answers once the learner has caught up, or 504 after server.request_timeout;
    # either way the new node's applied index is what counts. 503: another membership
    # change is being committed; retry.
    while :; do
      code="$(curl -s -o "$WORK/learner.json" -w '%{http_code}' --max-time 600 -X POST \
        -H 'Content-Type: application/json' "http://127.0.0.1:${KV_API}1/cluster/learners" \
        -d "{\"id\":4,\"api_addr\":\"http://127.0.0.1:${KV_API}4\",\"raft_addr\":\"http://127.0.0.1:${KV_RAFT}4\"}")" || true
      case "$code" in
        200 | 504) break ;;
        503) [ "$(date +%s)" -lt "$deadline" ] || die "POST /cluster/learners: 503 for 600 s"; sleep 0.2 ;;
        *) die "POST /cluster/learners: $code $(cat "$WORK/learner.json" 2>/dev/null)" ;;
      esac
    done
    local leader applied
    leader="$(json_get "$(kv_status 1)" 'r["leader_id"]')"
    target="$(json_get "$(kv_status "$leader")" 'r["applied_index"]')"
    until applied="$(json_get "$(kv_status 4)" 'r["applied_index"] or 0' 2>/dev/null)" &&
      [ "$applied" -ge "$target" ]; do
      [ "$(date +%s)" -lt "$deadline" ] || die "the new kvstore node has not caught up in 600 s"
      alive "${PID[kv4]}" || die "the new kvstore node exited: $(tail -3 "$WORK/kv4.log")"
      sleep 0.05
    done
    t1="$(now)"
    record join kvstore "{\"seconds\":$(elapsed "$t0" "$t1"),\"applied_index\":$target,\"learners_status\":$code}"
    curl -sf --max-time 60 -X DELETE "http://127.0.0.1:${KV_API}1/cluster/members/4" >/dev/null ||
      die "DELETE /cluster/members/4 failed"
    stop_one kv4
  fi
}

overwrite_and_measure_disk() { # SYSTEM
  local sys="$1" pass rev
  for pass in $(seq "$OVERWRITES"); do
    step "$sys: overwrite pass $pass/$OVERWRITES of the $N keys"
    preload "$sys" "$N" "$VALUE" overwrite
  done
  if [ "$sys" = etcd ]; then
    step "etcd: compact and defrag"
    rev="$(json_get "$(etcd_post 1 /v3/kv/range "{$ETCD_BENCH_RANGE,\"count_only\":true}")" 'r["header"]["revision"]')"
    etcdctl_all compact "$rev" --physical >>"$WORK/etcdctl.log"
    etcdctl_all defrag >>"$WORK/etcdctl.log"
  fi
  step "$sys: waiting for the data dirs' sizes to settle"
  settle "$sys"
  record disk "$sys" "{\"bytes\":[${SIZES// /,}],\"settled_after_s\":$SETTLED_AFTER}"
}

# --- PostgreSQL ---------------------------------------------------------------------

pg_up() { # starts the server; empty PG_CONTAINER (and a reason in PG_SKIPPED) if it cannot
  PG_SKIPPED=""
  if [ "$PG" = 0 ]; then PG_SKIPPED="PG=0"; return; fi
  if ! docker info >/dev/null 2>&1; then PG_SKIPPED="no Docker"; return; fi
  local image
  image="$(images/postgres-image.sh 2>>"$WORK/postgres-image.log")" || true
  if [ -z "$image" ]; then PG_SKIPPED="no PostgreSQL image"; return; fi
  PG_CONTAINER="$(docker run -d -e POSTGRES_PASSWORD=bench -p "127.0.0.1:$PG_PORT:5432" "$image")"
  for _ in $(seq 300); do
    PGPASSWORD=bench psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -c 'select 1' >/dev/null 2>&1 && return
    sleep 0.2
  done
  die "PostgreSQL did not start in 60 s"
}

pg_psql() { PGPASSWORD=bench psql -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -c "$1"; }

# --- the rounds ---------------------------------------------------------------------

# The run's settings, and the live data: every key's bytes and its value's.
config="$(SCALE="$SCALE" N="$N" VALUE="$VALUE" BIG_KEYS="$BIG_KEYS" BIG_VALUE="$BIG_VALUE" \
  DURATION="$DURATION" WARMUP="$WARMUP" ROUNDS="$ROUNDS" CONNS="$CONNS" EMPTY_KEYS="$EMPTY_KEYS" \
  BIG_CONNS="$BIG_CONNS" OVERWRITES="$OVERWRITES" PRELOAD_BATCH="$PRELOAD_BATCH" \
  KVSTORE="$(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
  ETCD="$(etcd --version | awk '/^etcd Version/ {print $3}')" python3 -c '
import json, os
e = os.environ
c = {k.lower(): e[k] for k in ("SCALE", "DURATION", "WARMUP", "KVSTORE", "ETCD")}
c.update({k.lower(): int(e[k]) for k in ("N", "VALUE", "BIG_KEYS", "BIG_VALUE", "ROUNDS", "CONNS",
                                         "EMPTY_KEYS", "BIG_CONNS", "OVERWRITES", "PRELOAD_BATCH")})
c["live_bytes"] = sum(len(f"bench-{i}") for i in range(c["n"])) + c["n"] * c["value"]
print(json.dumps(c))')"
record config none "$config"

for ROUND in $(seq "$ROUNDS"); do
  # The empty store: its write rate, and the open loop at half of etcd's.
  rate=""
  for sys in etcd kvstore; do
    step "$sys: empty store, closed-loop writes"
    start "$sys"
    load empty_writes "$sys" --keys "$EMPTY_KEYS"
    if [ "$sys" = etcd ]; then
      rate="$(json_get "$LAST_REPORT" 'round(r["throughput"] / 2)')"
      [ "$rate" -gt 0 ] || die "etcd wrote nothing: no rate for the open loop"
    fi
    step "$sys: open loop at $rate writes/s (half of etcd's rate)"
    load open_loop "$sys" --keys "$EMPTY_KEYS" --rate "$rate"
    stop_all
  done

  for sys in etcd kvstore; do
    step "$sys: $BIG_KEYS keys of $BIG_VALUE bytes"
    start "$sys"
    preload "$sys" "$BIG_KEYS" "$BIG_VALUE" big_preload
    gen big_writes "$sys" --connections "$BIG_CONNS" --keys "$BIG_KEYS" --value-size "$BIG_VALUE" \
      --duration "$DURATION" --warmup "$WARMUP"
    stop_all
  done

  for sys in etcd kvstore; do
    step "$sys: preloading $N keys"
    start "$sys"
    preload "$sys" "$N" "$VALUE"
    step "$sys: writes over the $N keys"
    load n_writes "$sys" --keys "$N"
    step "$sys: YCSB A, then B, over the $N keys"
    load ycsb_a "$sys" --keys "$N" --ycsb a
    load ycsb_b "$sys" --keys "$N" --ycsb b
    record rss "$sys" "$(rss "$sys")"
    step "$sys: restarting a follower (SIGTERM)"
    restart_follower "$sys"
    step "$sys: a new empty member joins"
    join_member "$sys"
    overwrite_and_measure_disk "$sys"
    stop_all
  done

  step "kvstore on PostgreSQL: empty store, closed-loop writes"
  [ -n "$PG_CONTAINER" ] || [ -n "${PG_SKIPPED:-}" ] || pg_up
  if [ -n "$PG_CONTAINER" ]; then
    for i in 1 2 3; do pg_psql "CREATE DATABASE kv${ROUND}_$i"; done
    KV_BACKEND=(KV_STORAGE_TYPE=database KV_DB_HOST=127.0.0.1 KV_DB_PORT="$PG_PORT" KV_DB_NAME="kv${ROUND}_%i"
      KV_DB_USER=postgres KV_DB_PASSWORD=bench KV_DB_SSL_MODE=disable KV_DB_MAX_CONNS=8)
    kv_start
    load pg_writes "kvstore postgres" --keys "$EMPTY_KEYS"
    stop_all
    KV_BACKEND=()
    for i in 1 2 3; do pg_psql "DROP DATABASE kv${ROUND}_$i"; done
    pg_psql CHECKPOINT
  else
    log "skipping the PostgreSQL row: $PG_SKIPPED"
    record pg_writes "kvstore postgres" "{\"skipped\":\"$PG_SKIPPED\"}"
  fi
done

STEP="the table"
[ -n "${KEEP_RESULTS:-}" ] && cp "$RESULTS" "$KEEP_RESULTS"
log "done; the table:"
python3 bench/scale_table.py "$RESULTS"
