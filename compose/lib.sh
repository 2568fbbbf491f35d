# Shared by the compose scripts.

# compose ARGS...: docker compose (v2) or docker-compose (v1), on this project's file.
compose() {
  if docker compose version >/dev/null 2>&1; then
    docker compose -p kvstore -f compose/docker-compose.yml "$@"
  else
    docker-compose -p kvstore -f compose/docker-compose.yml "$@"
  fi
}

# wait_for WHAT SECONDS COMMAND...: polls COMMAND every half second until it succeeds.
wait_for() {
  local what="$1" seconds="$2"
  shift 2
  local deadline=$(( $(date +%s) + seconds ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "timed out after ${seconds}s waiting for $what" >&2
      return 1
    fi
    sleep 0.5
  done
}

# json_field URL FIELD: prints FIELD of the JSON document at URL.
json_field() {
  curl -sf "$1" | python3 -c "import json,sys; v=json.load(sys.stdin).get('$2'); print('' if v is None else v)"
}
