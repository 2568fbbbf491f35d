#!/usr/bin/env bash
# Fuzzes the HTTP API against its own OpenAPI spec: builds the debug binary, starts one
# node on the embedded redb store (loopback, free ports, a temp data dir), and runs
# schemathesis (pinned in requirements.txt next to this script, installed into .venv/)
# on the spec the node serves. It fails on any 5xx, any status code the spec does not
# declare for the operation, any undeclared content type, and any body that does not
# match the declared schema.
#
# Environment:
#   API_FUZZ_MAX_EXAMPLES  test cases per operation and phase (default 200)
#   API_FUZZ_SEED          reproduce a run (its seed is printed at the end)
#   API_FUZZ_TIME_LIMIT    seconds after which a schemathesis run is stopped (600)
#   VENV, PYTHON, CARGO    as in the Makefile
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
CARGO=${CARGO:-cargo}
MAX_EXAMPLES=${API_FUZZ_MAX_EXAMPLES:-200}
TIME_LIMIT=${API_FUZZ_TIME_LIMIT:-600} # seconds for each schemathesis run, a backstop
READY_DEADLINE=60                      # seconds for the node to bind and elect itself

started=$(date +%s)
say() { printf 'api-fuzz: %s\n' "$*"; }

# schemathesis, at the pinned version, in the project's venv.
want=$(sed -n 's/^schemathesis==//p' integration-tests/api-fuzz/requirements.txt)
have=$("$VENV/bin/schemathesis" --version 2>/dev/null | awk '{print $NF}' || true)
if [ "$have" != "$want" ]; then
  [ -x "$VENV/bin/pip" ] || "$PYTHON" -m venv "$VENV"
  say "installing schemathesis $want into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r integration-tests/api-fuzz/requirements.txt
fi

"$CARGO" build -p kvstore
bin=$ROOT/target/debug/kvstore

work=$(mktemp -d "${TMPDIR:-/tmp}/kvstore-api-fuzz.XXXXXX")
node_pid=
cleanup() {
  if [ -n "$node_pid" ] && kill -0 "$node_pid" 2>/dev/null; then
    kill -TERM "$node_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$node_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$node_pid" 2>/dev/null || true
    wait "$node_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A fresh secret per run, for the cluster routes (see below).
secret=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')

# Port 0 for both listeners: the node picks free ports and logs the API's address.
# sync_writes off: the data is thrown away, and fsyncs would only slow the run.
# None of the caller's own KV_* variables reach the node.
(
  for v in $(compgen -e); do case $v in KV_*) unset "$v" ;; esac; done
  export KV_SERVER_HOST=127.0.0.1 KV_SERVER_PORT=0 KV_SERVER_REQUEST_TIMEOUT=5s \
    KV_CLUSTER_RAFT_HOST=127.0.0.1 KV_CLUSTER_RAFT_PORT=0 KV_CLUSTER_SECRET="$secret" \
    KV_STORAGE_TYPE=file KV_STORAGE_DATA_DIR="$work/data" KV_STORAGE_SYNC_WRITES=false \
    KV_LOG_FORMAT=json KV_LOG_LEVEL=info
  exec "$bin"
) >"$work/node.log" 2>&1 &
node_pid=$!

node_log_tail() {
  say "last lines of the node's log:"
  tail -n 30 "$work/node.log" >&2 || true
}

addr=
deadline=$(($(date +%s) + READY_DEADLINE))
while :; do
  if ! kill -0 "$node_pid" 2>/dev/null; then
    say "FAILED: the node exited before it was ready"
    node_log_tail
    exit 1
  fi
  if [ -z "$addr" ]; then
    addr=$(sed -n 's/.*"message":"serving the client API","addr":"\([^"]*\)".*/\1/p' "$work/node.log" | head -n 1)
  fi
  if [ -n "$addr" ] && curl -sf -m 2 "http://$addr/ready" >/dev/null; then
    break
  fi
  if [ "$(date +%s)" -ge "$deadline" ]; then
    say "FAILED: the node was not ready within ${READY_DEADLINE}s"
    node_log_tail
    exit 1
  fi
  sleep 0.2
done
say "node ready at http://$addr (pid $node_pid)"

# From the temp dir: schemathesis and hypothesis keep their caches in the current one.
fuzz() {
  (cd "$work" && timeout -k 10 "$TIME_LIMIT" "$ROOT/$VENV/bin/schemathesis" run "http://$addr/openapi.json" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-examples "$MAX_EXAMPLES" \
    ${API_FUZZ_SEED:+--seed "$API_FUZZ_SEED"} \
    --workers 1 \
    --request-timeout 15 \
    --generation-database none \
    --no-color \
    "$@")
}

failed=0
# Every operation but adding a learner, with the cluster secret. On a one-node cluster
# the cluster routes are safe to fuzz: the node refuses to promote or remove ids that
# are not members, and to remove its only voter. Adding a learner is not: the node
# then connects to the addresses in the body, which a fuzzer fills with any host.
# (Configuring the header for some operations only is not enough: in its stateful
# phase, schemathesis sent it to every operation of a scenario.)
say "fuzzing every operation but add_learner, with the cluster secret"
fuzz --exclude-operation-id add_learner -H "x-kvstore-secret: $secret" || failed=1
# Adding a learner without the secret: body validation and the 401. That every
# answer is a 4xx is the point, so the warnings saying so are off.
say "fuzzing add_learner, without the cluster secret"
fuzz --include-operation-id add_learner --phases examples,coverage,fuzzing --warnings off || failed=1

if ! kill -0 "$node_pid" 2>/dev/null; then
  say "FAILED: the node died during the run"
  node_log_tail
  exit 1
fi
if grep -q 'panicked at' "$work/node.log"; then
  say "the node panicked during the run:"
  grep -A3 'panicked at' "$work/node.log" | head -n 20 >&2
  failed=1
fi
if grep -q '"level":"ERROR"' "$work/node.log"; then
  say "the node logged errors during the run:"
  grep '"level":"ERROR"' "$work/node.log" | tail -n 10 >&2
fi

elapsed=$(($(date +%s) - started))
if [ "$failed" -ne 0 ]; then
  say "FAILED: schemathesis found problems in ${elapsed}s; see above"
  exit 1
fi
say "passed: no 5xx, every response matched the spec (${MAX_EXAMPLES} examples per operation, ${elapsed}s)"
