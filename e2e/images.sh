#!/usr/bin/env bash
# Builds the images the e2e suite runs and pushes them to the cluster's registry, without a Docker
# engine: a static binary in a FROM-scratch image assembled with crane.
# Usage: images.sh   (env: AIRLOCK_E2E_REGISTRY, default the local cluster's registry)
. "$(dirname "$0")/cluster/lib.sh"
ROOT=$(cd "$CLUSTER_DIR/../.." && pwd)
CRANE=${CRANE:-$(bin_dir crane "$CRANE_VERSION")/crane}
REG=${AIRLOCK_E2E_REGISTRY:-$REGISTRY}
TARGET=x86_64-unknown-linux-musl

# push_static_image <binary> <image ref> [with-ca]: a one-layer scratch image running
# /<binary name>; with-ca adds the host's CA bundle (for clients of HTTPS registries).
push_static_image() {
  local bin=$1 ref=$2 work name files
  name=$(basename "$bin")
  work=$(mktemp -d)
  install -m 0755 "$bin" "$work/$name"
  files=$name
  if [ "${3:-}" = with-ca ]; then
    install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$work/etc/ssl/certs/ca-certificates.crt"
    files="$files etc"
  fi
  # Deterministic layer: same binary, same digest.
  # shellcheck disable=SC2086
  tar --owner=0 --group=0 --numeric-owner --mtime=@0 --sort=name -C "$work" -cf "$work/layer.tar" $files
  "$CRANE" append --insecure -f "$work/layer.tar" -t "$ref" >/dev/null 2>"$work/crane.log" ||
    { cat "$work/crane.log" >&2; die "pushing $ref failed"; }
  "$CRANE" mutate --insecure --entrypoint="/$name" --user 65534:65534 "$ref" >/dev/null 2>"$work/crane.log" ||
    { cat "$work/crane.log" >&2; die "configuring $ref failed"; }
  rm -rf "$work"
  log "pushed $ref ($("$CRANE" digest --insecure "$ref"))"
}

OUT=$ROOT/target/e2e
mkdir -p "$OUT"
( cd "$ROOT" && cargo build --quiet --release --locked --target "$TARGET" \
    -p airlock-e2e-probe -p airlock-plugin-shim -p airlock-example-hello -p airlock-operator )
REL=$ROOT/target/$TARGET/release
push_static_image "$REL/airlock-e2e-probe" "$REG/airlock/e2e-probe:dev"
push_static_image "$REL/airlock-shim" "$REG/airlock/shim:dev"
push_static_image "$REL/hello" "$REG/examples/hello:1.0.0"
push_static_image "$REL/airlock-operator" "$REG/airlock/operator:dev" with-ca
# A hello image whose plugin never starts (the entry point is missing): an upgrade to it cannot
# become ready, which the rollback test needs.
push_static_image "$REL/airlock-e2e-probe" "$REG/examples/hello:broken"

# The hello plugin's bundle: its manifest, packed deterministically (same bytes, same digest).
bundle_dir=$(mktemp -d)
cp "$ROOT/examples/hello/plugin.yaml" "$bundle_dir/"
tar --owner=0 --group=0 --numeric-owner --mtime=@0 --sort=name -C "$bundle_dir" -cf - plugin.yaml |
  gzip -n -9 >"$OUT/hello-bundle.tar.gz"
rm -rf "$bundle_dir"
# References by digest, for the chart values and the tests.
{
  echo "AIRLOCK_SHIM_IMAGE=$REG/airlock/shim@$("$CRANE" digest --insecure "$REG/airlock/shim:dev")"
  echo "AIRLOCK_OPERATOR_IMAGE=$REG/airlock/operator@$("$CRANE" digest --insecure "$REG/airlock/operator:dev")"
  echo "AIRLOCK_HELLO_IMAGE=$REG/examples/hello:1.0.0"
  echo "AIRLOCK_HELLO_BROKEN_IMAGE=$REG/examples/hello:broken"
  echo "AIRLOCK_HELLO_BUNDLE=$OUT/hello-bundle.tar.gz"
} >"$OUT/images.env"
log "wrote $OUT/images.env and $OUT/hello-bundle.tar.gz"
