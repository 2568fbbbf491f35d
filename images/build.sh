#!/usr/bin/env bash
# Builds the container images kvstore's tests and dev stack need, offline from a
# registry: root file systems come from Debian's packages (debootstrap), are imported
# with `docker import`, and a Dockerfile adds the entrypoint on top.
#
#   images/build.sh postgres    ->  kvstore-postgres:15      (PostgreSQL 15)
#   images/build.sh prometheus  ->  kvstore-prometheus:2.42  (Prometheus 2.42)
#   images/build.sh kvstore     ->  kvstore:local            (the release binary built here)
#
# An image that already exists is left alone (delete it to rebuild), except kvstore:local,
# which is rebuilt from the current binary every time.
set -euo pipefail
cd "$(dirname "$0")"

MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm

log() { printf '== %s\n' "$*" >&2; }

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# rootfs TAG PACKAGES: debootstrap a minimal Debian with PACKAGES and import it as TAG.
rootfs() {
  local tag="$1" packages="$2"
  if have_image "$tag"; then return; fi
  command -v debootstrap >/dev/null || {
    log "installing debootstrap"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
  }
  local dir
  dir="$(mktemp -d)"
  log "debootstrap $SUITE with $packages"
  if ! debootstrap --variant=minbase --include="$packages" "$SUITE" "$dir" "$MIRROR" >"$dir.log" 2>&1; then
    tail -20 "$dir.log" >&2
    rm -rf "$dir" "$dir.log"
    return 1
  fi
  # Trim what a container never uses.
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* \
         "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/locale/*
  log "importing $tag"
  tar -C "$dir" -c . | docker import - "$tag" >/dev/null
  rm -rf "$dir" "$dir.log"
}

build_postgres() {
  local tag=kvstore-postgres:15
  if have_image "$tag"; then log "$tag exists"; return; fi
  rootfs kvstore-rootfs-postgres:15 postgresql-15
  log "building $tag"
  DOCKER_BUILDKIT=0 docker build -q -t "$tag" postgres >/dev/null
  log "built $tag"
}

build_prometheus() {
  local tag=kvstore-prometheus:2.42
  if have_image "$tag"; then log "$tag exists"; return; fi
  rootfs kvstore-rootfs-prometheus:2.42 prometheus
  log "building $tag"
  DOCKER_BUILDKIT=0 docker build -q -t "$tag" prometheus >/dev/null
  log "built $tag"
}

# The runtime image around the release binary built on this machine (same Debian, so
# the same glibc): a minimal root file system, the binary, a non-root user.
build_kvstore() {
  rootfs kvstore-rootfs-base:bookworm ca-certificates
  log "building the release binary"
  (cd .. && cargo build --release -p kvstore)
  strip -o kvstore/kvstore ../target/release/kvstore
  log "building kvstore:local"
  DOCKER_BUILDKIT=0 docker build -q -t kvstore:local kvstore >/dev/null
  rm -f kvstore/kvstore
  log "built kvstore:local"
}

for image in "${@:-postgres}"; do
  case "$image" in
    postgres) build_postgres ;;
    prometheus) build_prometheus ;;
    kvstore) build_kvstore ;;
    *) echo "unknown image: $image (known: postgres, prometheus, kvstore)" >&2; exit 2 ;;
  esac
done
