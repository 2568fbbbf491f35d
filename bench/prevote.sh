#!/usr/bin/env bash
# Pre-Vote on and off under the partition fault scenarios of
# integration-tests/tests/faults.rs: each scenario runs ROUNDS times (1) with the nodes'
# Pre-Vote on (their default) and off (KV_FAULTS_PRE_VOTE=false), one run at a time,
# then one table: per run, the terms started and the leader changes the nodes reported,
# the operations that succeeded and that did not (failed or unknown), and the checker's
# verdict.
#
# SCENARIOS picks the tests (default: follower_cut_off follower_flapping leader_cut_off).
# Needs Docker and the images the fault tests use (`make test-images` builds them).
# Each run's report is kept in target/prevote/ (or under CARGO_TARGET_DIR).
# Exits non-zero if any run failed (a history not linearizable, or a floor missed).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${ROUNDS:-1}"
SCENARIOS="${SCENARIOS:-follower_cut_off follower_flapping leader_cut_off}"
TARGET="${CARGO_TARGET_DIR:-target}"
OUT="$TARGET/prevote"
CARGO="${CARGO:-cargo}"

log() { printf '== %s\n' "$*" >&2; }

export KV_TEST_POSTGRES_IMAGE="${KV_TEST_POSTGRES_IMAGE:-$(images/postgres-image.sh)}"
[ -n "$KV_TEST_POSTGRES_IMAGE" ] || { echo "no Docker daemon: nothing to run" >&2; exit 1; }
export KV_REQUIRE_DOCKER=1

log "building the fault tests"
"$CARGO" test -q -p integration-tests --test faults --no-run 2>&1 | grep -v '^ *Executable' >&2 || true

rm -rf "$OUT"
mkdir -p "$OUT"
failed=0
for round in $(seq "$ROUNDS"); do
  for scenario in $SCENARIOS; do
    for pre_vote in true false; do
      dir="$TARGET/integration-tests/${scenario//_/-}"
      run="$OUT/$scenario-$pre_vote-$round"
      rm -rf "$dir"
      log "round $round/$ROUNDS: $scenario, Pre-Vote $pre_vote"
      if ! KV_FAULTS_PRE_VOTE="$pre_vote" "$CARGO" test -q -p integration-tests --test faults \
           -- --exact --test-threads 1 --nocapture "$scenario" >"$run.log" 2>&1; then
        failed=1
        log "$scenario with Pre-Vote $pre_vote failed; see $run.log"
      fi
      if [ -f "$dir/report.txt" ]; then cp "$dir/report.txt" "$run.txt"; fi
    done
  done
done

# One row per run, from its report.
field() { sed -n "$2" "$1" | head -1; }
row() { printf '%-18s %-9s %7s %8s %7s %14s  %s\n' "$@"; }
row scenario Pre-Vote terms leader ops ops ''
row '' '' started changes ok failed/unknown linearizable
for round in $(seq "$ROUNDS"); do
  for scenario in $SCENARIOS; do
    for pre_vote in true false; do
      report="$OUT/$scenario-$pre_vote-$round.txt"
      setting=$([ "$pre_vote" = true ] && echo on || echo off)
      if [ ! -f "$report" ]; then
        row "$scenario" "$setting" - - - - "no report"
        continue
      fi
      row "$scenario" "$setting" \
        "$(field "$report" 's/^leadership: .*(\([0-9]*\) started).*/\1/p')" \
        "$(field "$report" 's/^leadership: .*, \([0-9]*\) leader changes.*/\1/p')" \
        "$(field "$report" 's/^operations: [0-9]* ran, \([0-9]*\) succeeded.*/\1/p')" \
        "$(field "$report" 's/^operations: .* succeeded, \([0-9]*\) failed, \([0-9]*\) unknown/\1 \/ \2/p')" \
        "$(field "$report" 's/^linearizable: //p')"
    done
  done
done
echo "reports: $OUT/"
exit "$failed"
