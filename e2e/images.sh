#!/usr/bin/env bash
# Builds the images the e2e suite runs and pushes them to the cluster's registry, without a Docker
# engine: a static binary in a FROM-scratch image assembled with crane.
# Usage: images.sh   (env: AIRLOCK_E2E_REGISTRY, default the local cluster's registry)
# shellcheck source=SCRIPTDIR/cluster/lib.sh
. "$(dirname "$0")/cluster/lib.sh"
ROOT=$(cd "$CLUSTER_DIR/../.." && pwd)
CRANE=${CRANE:-$(bin_dir crane "$CRANE_VERSION")/crane}
REG=${AIRLOCK_E2E_REGISTRY:-$REGISTRY}
TARGET=x86_64-unknown-linux-musl

# push_static_image <binary> <image ref> [with-ca [more binaries...]]: a one-layer scratch image
# running /<binary name>; with-ca adds the host's CA bundle (for clients of HTTPS registries); more
# binaries are copied next to the first (run them with the pod's `command`).
push_static_image() {
  local bin=$1 ref=$2 work name files extra
  name=$(basename "$bin")
  work=$(mktemp -d)
  install -m 0755 "$bin" "$work/$name"
  files=$name
  for extra in "${@:4}"; do
    install -m 0755 "$extra" "$work/$(basename "$extra")"
    files="$files $(basename "$extra")"
  done
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

# push_dir_image <dir> <image ref>: a one-layer scratch image with <dir> as its root (no entry
# point: the plugin's bundle names the program).
push_dir_image() {
  local dir=$1 ref=$2 layer
  layer=$(mktemp)
  tar --owner=0 --group=0 --numeric-owner --mtime=@0 --sort=name -C "$dir" -cf "$layer" .
  "$CRANE" append --insecure -f "$layer" -t "$ref" >/dev/null || die "pushing $ref failed"
  "$CRANE" mutate --insecure --user 65534:65534 "$ref" >/dev/null || die "configuring $ref failed"
  rm -f "$layer"
  log "pushed $ref ($("$CRANE" digest --insecure "$ref"))"
}

OUT=$ROOT/target/e2e
mkdir -p "$OUT"
( cd "$ROOT" && cargo build --quiet --release --locked --target "$TARGET" \
    -p airlock-e2e-probe -p airlock-e2e-hostile -p airlock-plugin-shim -p airlock-operator -p airlock-router -p airlockctl -p airlock-example-hello \
    -p airlock-example-data-formatter -p airlock-example-event-logger -p airlock-example-crash-test )
REL=$ROOT/target/$TARGET/release
push_static_image "$REL/airlock-e2e-probe" "$REG/airlock/e2e-probe:dev"
push_static_image "$REL/airlock-shim" "$REG/airlock/shim:dev"
push_static_image "$REL/hello" "$REG/examples/hello:1.0.0"
for sample in data-formatter event-logger crash-test; do
  push_static_image "$REL/$sample" "$REG/examples/$sample:1.0.0"
done
push_static_image "$REL/hostile" "$REG/airlock/e2e-hostile:dev"
# Examples in other languages: Go (a static binary) and Python (a runtime image; the code is in
# the signed bundle).
GO_OUT=$(mktemp -d)
( cd "$ROOT/examples/go-greeter" && CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local \
    go build -trimpath -ldflags '-s -w' -o "$GO_OUT/go-greeter" . ) || die "building examples/go-greeter failed"
push_static_image "$GO_OUT/go-greeter" "$REG/examples/go-greeter:1.0.0"
rm -rf "$GO_OUT"
PY_ROOT=$(mktemp -d)
"$ROOT/e2e/python-runtime.sh" "$PY_ROOT"
push_dir_image "$PY_ROOT" "$REG/examples/python-runtime:3"
rm -rf "$PY_ROOT"
push_static_image "$REL/airlock-operator" "$REG/airlock/operator:dev" with-ca "$REL/airlock-router"
# A hello image whose plugin never starts (the entry point is missing): an upgrade to it cannot
# become ready, which the rollback test needs.
push_static_image "$REL/airlock-e2e-probe" "$REG/examples/hello:broken"

# pack_bundle <out.tar.gz> <files...>: the files packed into a bundle by `airlockctl bundle pack`,
# the one packer users have: reproducible (same files, same digest) and checked as the operator
# checks bundles.
pack_bundle() {
  local out=$1 dir f; shift
  dir=$(mktemp -d)
  for f in "$@"; do cp "$f" "$dir/"; done
  "$REL/airlockctl" bundle pack "$dir" --output "$out" >/dev/null
  rm -rf "$dir"
}
pack_bundle "$OUT/hello-bundle.tar.gz" "$ROOT/examples/hello/plugin.yaml"
for sample in data-formatter event-logger crash-test; do
  pack_bundle "$OUT/$sample-bundle.tar.gz" "$ROOT/examples/$sample/plugin.yaml"
done
pack_bundle "$OUT/hostile-bundle.tar.gz" "$ROOT/e2e/hostile/plugin.yaml"
pack_bundle "$OUT/go-greeter-bundle.tar.gz" "$ROOT/examples/go-greeter/plugin.yaml"
pack_bundle "$OUT/python-upper-bundle.tar.gz" "$ROOT/examples/python-upper/plugin.yaml" \
  "$ROOT/examples/python-upper/plugin.py"
# crash-test whose onLoad exhausts memory: same image, a bundle that says so.
oom_config=$(mktemp -d)/crash-test.json
echo '{"onLoad": "exhaust-memory"}' >"$oom_config"
pack_bundle "$OUT/crash-test-oom-bundle.tar.gz" "$ROOT/examples/crash-test/plugin.yaml" "$oom_config"
rm -rf "$(dirname "$oom_config")"
# References by digest, for the chart values and the tests.
{
  echo "AIRLOCK_SHIM_IMAGE=$REG/airlock/shim@$("$CRANE" digest --insecure "$REG/airlock/shim:dev")"
  echo "AIRLOCK_OPERATOR_IMAGE=$REG/airlock/operator@$("$CRANE" digest --insecure "$REG/airlock/operator:dev")"
  echo "AIRLOCK_HELLO_IMAGE=$REG/examples/hello:1.0.0"
  echo "AIRLOCK_HELLO_BROKEN_IMAGE=$REG/examples/hello:broken"
  echo "AIRLOCK_HELLO_BUNDLE=$OUT/hello-bundle.tar.gz"
  echo "AIRLOCK_GO_GREETER_IMAGE=$REG/examples/go-greeter:1.0.0"
  echo "AIRLOCK_GO_GREETER_BUNDLE=$OUT/go-greeter-bundle.tar.gz"
  echo "AIRLOCK_PYTHON_UPPER_IMAGE=$REG/examples/python-runtime:3"
  echo "AIRLOCK_PYTHON_UPPER_BUNDLE=$OUT/python-upper-bundle.tar.gz"
  echo "AIRLOCK_HOSTILE_IMAGE=$REG/airlock/e2e-hostile:dev"
  echo "AIRLOCK_HOSTILE_BUNDLE=$OUT/hostile-bundle.tar.gz"
  for sample in data-formatter event-logger crash-test crash-test-oom; do
    key=$(echo "$sample" | tr 'a-z-' 'A-Z_')
    echo "AIRLOCK_${key}_IMAGE=$REG/examples/${sample%-oom}:1.0.0"
    echo "AIRLOCK_${key}_BUNDLE=$OUT/$sample-bundle.tar.gz"
  done
} >"$OUT/images.env"
log "wrote $OUT/images.env and the example bundles in $OUT"
