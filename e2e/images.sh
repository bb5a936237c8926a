#!/usr/bin/env bash
# Builds the images the e2e suite runs and pushes them to the cluster's registry, without a Docker
# engine: a static binary in a FROM-scratch image assembled with crane.
# Usage: images.sh   (env: AIRLOCK_E2E_REGISTRY, default the local cluster's registry)
. "$(dirname "$0")/cluster/lib.sh"
ROOT=$(cd "$CLUSTER_DIR/../.." && pwd)
CRANE=${CRANE:-$(bin_dir crane "$CRANE_VERSION")/crane}
REG=${AIRLOCK_E2E_REGISTRY:-$REGISTRY}
TARGET=x86_64-unknown-linux-musl

# push_static_image <binary> <image ref>: a one-layer scratch image running /<binary name>.
push_static_image() {
  local bin=$1 ref=$2 work name
  name=$(basename "$bin")
  work=$(mktemp -d)
  install -m 0755 "$bin" "$work/$name"
  # Deterministic layer: same binary, same digest.
  tar --owner=0 --group=0 --numeric-owner --mtime=@0 --sort=name -C "$work" -cf "$work/layer.tar" "$name"
  "$CRANE" append --insecure -f "$work/layer.tar" -t "$ref" >/dev/null
  "$CRANE" mutate --insecure --entrypoint="/$name" --user 65534:65534 "$ref" >/dev/null
  rm -rf "$work"
  log "pushed $ref ($("$CRANE" digest --insecure "$ref"))"
}

( cd "$ROOT" && cargo build --quiet --release --locked -p airlock-e2e-probe --target "$TARGET" )
push_static_image "$ROOT/target/$TARGET/release/airlock-e2e-probe" "$REG/airlock/e2e-probe:dev"
