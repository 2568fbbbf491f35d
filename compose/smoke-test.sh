#!/usr/bin/env bash
# The compose stack end to end: make up, write via kv1, read via kv3, Prometheus scrapes
# all three and has loaded the alert rules, stop the leader's container, a new leader
# serves, make down leaves nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
. compose/lib.sh

cleanup() { make -s down VOLUMES=1 >/dev/null 2>&1 || true; }
trap cleanup EXIT

make -s up

echo "== write via kv1, read via kv3"
curl -sf -X PUT http://127.0.0.1:8081/kv/smoke -H 'Content-Type: application/json' -d '{"value": "compose"}' >/dev/null
[ "$(json_field http://127.0.0.1:8083/kv/smoke value)" = compose ]

echo "== Prometheus scrapes all three nodes"
targets_up() {
  curl -sf 'http://127.0.0.1:9090/api/v1/query?query=sum(up%7Bjob%3D%22kvstore%22%7D)' |
    python3 -c "import json,sys; r=json.load(sys.stdin)['data']['result']; sys.exit(0 if r and float(r[0]['value'][1]) == 3 else 1)"
}
wait_for "three targets up in Prometheus" 90 targets_up

echo "== Prometheus has loaded every alert of compose/alerts.yml"
rules_loaded() {
  curl -sf 'http://127.0.0.1:9090/api/v1/rules?type=alert' | python3 -c "
import json, re, sys
loaded = {r['name'] for g in json.load(sys.stdin)['data']['groups'] for r in g['rules']}
expected = set(re.findall(r'^\s*- alert: (\w+)', open('compose/alerts.yml').read(), re.M))
missing = expected - loaded
if missing: print('not loaded:', sorted(missing), file=sys.stderr)
sys.exit(1 if missing or not expected else 0)"
}
wait_for "the alert rules in Prometheus" 30 rules_loaded

echo "== stop the leader's container"
leader="$(json_field http://127.0.0.1:8081/status leader_id)"
[ -n "$leader" ]
compose stop "kv$leader" >/dev/null
survivors=()
for n in 1 2 3; do [ "$n" != "$leader" ] && survivors+=("$n"); done
new_leader() {
  local a b
  a="$(json_field "http://127.0.0.1:808${survivors[0]}/status" leader_id)"
  b="$(json_field "http://127.0.0.1:808${survivors[1]}/status" leader_id)"
  [ -n "$a" ] && [ "$a" = "$b" ] && [ "$a" != "$leader" ]
}
wait_for "a new leader among kv${survivors[0]} and kv${survivors[1]}" 60 new_leader
write_after() {
  curl -sf -X PUT "http://127.0.0.1:808${survivors[0]}/kv/after" -H 'Content-Type: application/json' -d '{"value": "failover"}'
}
wait_for "a write after the failover" 30 write_after
[ "$(json_field "http://127.0.0.1:808${survivors[1]}/kv/after" value)" = failover ]

echo "== make down leaves nothing behind"
trap - EXIT
make -s down VOLUMES=1
for kind in container network volume; do
  left="$(docker $kind ls -q --filter label=com.docker.compose.project=kvstore $([ $kind = container ] && echo -a))"
  if [ -n "$left" ]; then
    echo "left behind after make down: $kind $left" >&2
    exit 1
  fi
done
echo "compose smoke test passed"
