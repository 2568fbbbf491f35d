#!/bin/sh
# kvstore in a StatefulSet pod: derives the node's identity and addresses from the pod's
# name, then either initialises the cluster (the first pod, on a new cluster) or starts
# the node and makes it a voter through the membership API (every other pod, and the
# first one when a cluster already answers). Restarts with data just start the node.
#
# Environment (set by statefulset.yaml):
#   POD_NAME, POD_NAMESPACE   from the downward API; the ordinal ends POD_NAME
#   KV_API_URL_TEMPLATE       a pod's API URL; {pod}, {ordinal} and {namespace} are
#   KV_RAFT_URL_TEMPLATE      replaced; its Raft URL likewise
#   KV_CLIENT_URL             the client Service: any ready member, to join through
#                             ({namespace} is replaced)
#   KV_STORAGE_DATA_DIR       the pod's volume; `node-id` in it keeps the node's id
#   KV_DB_NAME                (PostgreSQL) may name the database with {ordinal}
# and every other KV_* setting, which kvstore reads itself.
set -eu

say() { echo "kvstore-entrypoint: $*" >&2; }

ordinal=${POD_NAME##*-}
set_name=${POD_NAME%-*}
case $ordinal in
  '' | *[!0-9]*) say "POD_NAME=$POD_NAME does not end in -<ordinal>"; exit 2 ;;
esac

# fill TEMPLATE ORDINAL: the template with that pod's name, ordinal and namespace.
fill() {
  printf '%s' "$1" | sed -e "s/{pod}/$set_name-$2/g" -e "s/{ordinal}/$2/g" \
    -e "s/{namespace}/${POD_NAMESPACE:-default}/g"
}

KV_CLUSTER_ADVERTISE_API=$(fill "$KV_API_URL_TEMPLATE" "$ordinal")
KV_CLUSTER_ADVERTISE_RAFT=$(fill "$KV_RAFT_URL_TEMPLATE" "$ordinal")
export KV_CLUSTER_ADVERTISE_API KV_CLUSTER_ADVERTISE_RAFT
if [ -n "${KV_DB_NAME:-}" ]; then
  KV_DB_NAME=$(fill "$KV_DB_NAME" "$ordinal")
  export KV_DB_NAME
fi

data=${KV_STORAGE_DATA_DIR:?KV_STORAGE_DATA_DIR must name the pod volume}
mkdir -p "$data"
if [ -s "$data/node-id" ]; then
  KV_RAFT_NODE_ID=$(cat "$data/node-id")
  fresh=false
else
  # A new volume gets an id no node has had: the ids of removed members are retired for
  # good, so a pod that comes back on a new volume (scaled down and up again, or a lost
  # disk) cannot take its former id. Milliseconds, not seconds: a pod removed and
  # recreated on a new volume within one second took its retired id again.
  KV_RAFT_NODE_ID=$(( $(date +%s%3N) * 1000 + ordinal ))
  printf '%s\n' "$KV_RAFT_NODE_ID" > "$data/node-id.new"
  mv "$data/node-id.new" "$data/node-id"
  fresh=true
fi
export KV_RAFT_NODE_ID

# Where a cluster may answer: the client Service and the pods before this one. The
# first pod has none before it: it asks the pods after it (up to kvstore-9), which run
# when only its volume was lost, or start beside it after every pod was stopped.
peers=$(fill "${KV_CLIENT_URL:-}" "$ordinal")
if [ "$ordinal" -eq 0 ]; then
  first=1 last=9
else
  first=0 last=$((ordinal - 1))
fi
i=$first
while [ "$i" -le "$last" ]; do
  peers="$peers,$(fill "$KV_API_URL_TEMPLATE" "$i")"
  i=$((i + 1))
done

# A node with data needs no bootstrap; it still runs the join, which has nothing to do
# unless an earlier start stopped between adding it as a learner and promoting it.
join=true
KV_CLUSTER_BOOTSTRAP=false
if [ "$fresh" = true ] && [ "$ordinal" -eq 0 ]; then
  status=0
  kvstore join --check --peers "$peers" || status=$?
  case $status in
    0) say "a cluster already runs: node $KV_RAFT_NODE_ID joins it" ;;
    3) say "no cluster answers: node $KV_RAFT_NODE_ID initialises one"
       KV_CLUSTER_BOOTSTRAP=true
       join=false ;;
    *) exit "$status" ;;
  esac
fi
export KV_CLUSTER_BOOTSTRAP

kvstore "$@" &
node=$!
joiner=
stopping=false
# SIGTERM (pod deletion) goes to the node, which drains and exits, and to the join.
trap 'stopping=true; kill -TERM "$node" ${joiner:+"$joiner"} 2>/dev/null || true' TERM INT

joined=0
if [ "$join" = true ]; then
  kvstore join --peers "$peers" &
  joiner=$!
  wait "$joiner" || joined=$?
  joiner=
  if [ "$stopping" = true ]; then
    joined=0
  elif [ "$joined" -ne 0 ] && kill -0 "$node" 2>/dev/null; then
    say "node $KV_RAFT_NODE_ID could not join (exit $joined): stopping it"
    # Not before it has started: a node stopped while it creates its files on a new
    # volume can leave them half-written (up to 30 s).
    i=0
    while [ "$i" -lt 30 ] && kill -0 "$node" 2>/dev/null && ! kvstore health >/dev/null 2>&1; do
      sleep 1
      i=$((i + 1))
    done
    kill -TERM "$node" 2>/dev/null || true
  fi
fi

# `wait` returns early when a trapped signal arrives: wait again until the node is gone.
status=0
wait "$node" || status=$?
while kill -0 "$node" 2>/dev/null; do
  status=0
  wait "$node" || status=$?
done
# A node stopped because it could not join must not look like a clean exit.
if [ "$joined" -ne 0 ]; then exit "$joined"; fi
exit "$status"
