#!/usr/bin/env bash
# Builds the container images kvstore's tests and dev stack need, offline from a
# registry: root file systems come from Debian's packages (debootstrap), are imported
# with `docker import`, and a Dockerfile adds the entrypoint on top.
#
#   images/build.sh postgres    ->  kvstore-postgres:15      (PostgreSQL 15)
#   images/build.sh prometheus  ->  kvstore-prometheus:2.42  (Prometheus 2.42)
#   images/build.sh kvstore     ->  kvstore:local            (the root Dockerfile)
#
# kvstore:local is built from the root Dockerfile, the one a registry-backed `make up`
# builds, with stand-ins for its base images: kvstore-debian:bookworm (a minimal root
# file system) and kvstore-rust:<rustc version>-<Cargo.lock hash> (that plus gcc, this
# machine's rustup toolchain and the vendored crates). KV_RUST_IMAGE and KV_RUNTIME_IMAGE
# name other base images instead (say rust:1-bookworm and debian:bookworm-slim).
#
# An image that already exists is left alone (delete it to rebuild), except kvstore:local,
# which is rebuilt every time (Docker's layer cache keeps that quick when little changed).
set -euo pipefail
cd "$(dirname "$0")"

MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm

log() { printf '== %s\n' "$*" >&2; }

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# docker_build NAME ARGS...: `docker build ARGS...` with the classic builder, which
# builds offline FROM local tags; the output goes to target/docker/NAME-build.log, and
# its end is shown if the build fails.
docker_build() {
  local output="../target/docker/$1-build.log"
  shift
  mkdir -p ../target/docker
  if ! DOCKER_BUILDKIT=0 docker build "$@" >"$output" 2>&1; then
    tail -30 "$output" >&2
    log "docker build failed; the whole output is in ${output#../}"
    return 1
  fi
}

# copy SOURCE... DIR: hard links where the file system allows (the Rust toolchain is
# about 550 MB), else copies.
copy() { cp -al "$@" 2>/dev/null || cp -a "$@"; }

# rootfs TAG [PACKAGES]: debootstrap a minimal Debian with PACKAGES (comma-separated) and
# import it as TAG.
rootfs() {
  local tag="$1" packages="${2:-}"
  if have_image "$tag"; then return; fi
  command -v debootstrap >/dev/null || {
    log "installing debootstrap"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
  }
  local dir
  dir="$(mktemp -d)"
  log "debootstrap $SUITE${packages:+ with $packages}"
  if ! debootstrap --variant=minbase ${packages:+--include="$packages"} "$SUITE" "$dir" "$MIRROR" >"$dir.log" 2>&1; then
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

# The stand-in for the official Rust image (images/rust/Dockerfile); sets RUST_STANDIN.
# Its tag names the toolchain and the vendored crates (Cargo.lock and the set compiled),
# so a change to either makes a new image.
build_rust() {
  local sysroot host version ctx
  sysroot="$(rustc --print sysroot)"
  host="$(rustc -vV | sed -n 's/^host: //p')"
  version="$(rustc -vV | sed -n 's/^release: //p')"
  RUST_STANDIN="kvstore-rust:$version-$(python3 vendor.py --key)"
  if have_image "$RUST_STANDIN"; then log "$RUST_STANDIN exists"; return; fi
  # A rustup toolchain is self-contained under its sysroot; a distribution's is not.
  if [ "$sysroot" = /usr ] || [ ! -x "$sysroot/bin/cargo" ]; then
    log "the Rust toolchain at $sysroot is not a rustup toolchain, which the image build copies;" \
        "install Rust with rustup, or set KV_RUST_IMAGE to an image with Rust and network access to crates.io"
    return 1
  fi
  rootfs kvstore-rootfs-rust:bookworm gcc,libc6-dev
  ctx=../target/docker/rust
  rm -rf "$ctx"
  mkdir -p "$ctx/toolchain/bin" "$ctx/toolchain/lib/rustlib" "$ctx/cargo"
  log "copying the Rust $version toolchain (rustc, cargo, the $host standard library)"
  copy "$sysroot/bin/rustc" "$sysroot/bin/cargo" "$ctx/toolchain/bin/"
  copy "$sysroot"/lib/*.so* "$ctx/toolchain/lib/"
  copy "$sysroot/lib/rustlib/$host" "$ctx/toolchain/lib/rustlib/"
  log "vendoring the crates of Cargo.lock"
  python3 vendor.py "$ctx/cargo/vendor"
  cat >"$ctx/cargo/config.toml" <<'TOML'
[source.crates-io]
replace-with = "vendored"

[source.vendored]
directory = "/usr/local/cargo/vendor"
TOML
  log "building $RUST_STANDIN"
  docker_build rust -t "$RUST_STANDIN" -f rust/Dockerfile "$ctx"
  rm -rf "$ctx"
  log "built $RUST_STANDIN"
}

# kvstore:local from the root Dockerfile, on the stand-ins unless KV_RUST_IMAGE and
# KV_RUNTIME_IMAGE name other base images.
build_kvstore() {
  python3 check_context.py
  local rust="${KV_RUST_IMAGE:-}" runtime="${KV_RUNTIME_IMAGE:-}"
  if [ -z "$rust" ]; then
    build_rust
    rust="$RUST_STANDIN"
  fi
  if [ -z "$runtime" ]; then
    runtime=kvstore-debian:bookworm
    rootfs "$runtime"
  fi
  log "building kvstore:local from the root Dockerfile (RUST_IMAGE=$rust, RUNTIME_IMAGE=$runtime)"
  local start=$SECONDS
  docker_build kvstore --build-arg RUST_IMAGE="$rust" --build-arg RUNTIME_IMAGE="$runtime" \
    -t kvstore:local -f ../Dockerfile ..
  log "built kvstore:local in $((SECONDS - start))s, $(docker image inspect -f '{{.Size}}' kvstore:local | awk '{printf "%d MB", $1 / 1000000}')"
}

for image in "${@:-postgres}"; do
  case "$image" in
    postgres) build_postgres ;;
    prometheus) build_prometheus ;;
    kvstore) build_kvstore ;;
    *) echo "unknown image: $image (known: postgres, prometheus, kvstore)" >&2; exit 2 ;;
  esac
done
