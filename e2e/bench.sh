#!/usr/bin/env bash
# Benchmarks: image verification (cold vs cached), the router against direct shim calls
# (e2e/src/bin/router-bench.rs), and the controller at scale (e2e/src/bin/controller-bench.rs:
# BENCH_PLUGINS disabled Plugins, default 1000; BENCH_STEADY_SECONDS, default 60), and the control
# plane at 10,000 enabled Plugins on KWOK's fake nodes (e2e/src/bin/kwok-bench.rs: BENCH_KWOK_PLUGINS,
# default 10000, 0 to skip; BENCH_KWOK_NAMESPACES, default 100; BENCH_KWOK_FLOOR=0 skips its floor).
# This script prepares what the Rust benches need from upstream tools (a cosign-signed image).
# shellcheck source=SCRIPTDIR/cluster/lib.sh
. "$(dirname "$0")/cluster/lib.sh"
ROOT=$(cd "$CLUSTER_DIR/../.." && pwd)
export KUBECONFIG=${KUBECONFIG:-$STATE/kubeconfig}
# shellcheck source=/dev/null
. "$ROOT/target/e2e/images.env"

# --- image signature verification: cold vs cached, with registry request counts -------------------
log "image verification bench: signing a fresh image with cosign"
KEYDIR=$(mktemp -d)
trap 'rm -rf "$KEYDIR"' EXIT
(cd "$KEYDIR" && COSIGN_PASSWORD='' cosign generate-key-pair >/dev/null 2>&1)
BENCH_REPO=$REGISTRY/bench/verify
crane mutate --insecure "$AIRLOCK_HELLO_IMAGE" --env "AIRLOCK_BENCH=$(date +%s%N)" -t "$BENCH_REPO:latest" >/dev/null
BENCH_DIGEST=$(crane digest --insecure "$BENCH_REPO:latest")
(cd "$KEYDIR" && COSIGN_PASSWORD='' cosign sign --key cosign.key --tlog-upload=false --allow-http-registry -y "$BENCH_REPO@$BENCH_DIGEST" >/dev/null 2>&1)
AIRLOCK_BENCH_IMAGE=$BENCH_REPO@$BENCH_DIGEST AIRLOCK_BENCH_COSIGN_PUB=$KEYDIR/cosign.pub \
  AIRLOCK_BENCH_REGISTRY_LOG=$STATE/logs/registry.log \
  cargo bench -q --locked -p airlock-operator --bench verification

# --- the router's own cost per call, in one process (no cluster): logs as the binary writes them,
# then as it did before they moved to a background writer. Its log lines go to a file.
log "router hot path in one process (router/benches/hot_path.rs)"
for logs in background blocking; do
  BENCH_HOT_PATH_LOG=$logs cargo bench -q --locked -p airlock-router --bench hot_path 2>"$STATE/logs/bench-hot-path.log" \
    || { tail -20 "$STATE/logs/bench-hot-path.log"; exit 1; }
done

# --- the router's cost: the same call direct to the shim and through the router, and a pipeline --
# Through the router it calls as a host application does: a ServiceAccount token for the audience
# airlock-router, granted by a PluginCallerBinding (the bench's fixture makes both).
log "router bench: direct to the shim vs through the router (3 data-formatter plugins)"
cargo run -q --locked -p airlock-e2e --bin router-bench

# --- the controller at scale: N disabled Plugins, writes at steady state against an idle floor ----
log "controller bench: ${BENCH_PLUGINS:-1000} disabled Plugins"
cargo run -q --locked -p airlock-e2e --bin controller-bench

# --- the control plane at 10,000 enabled Plugins, their pods on KWOK's fake nodes -----------------
log "control plane bench: ${BENCH_KWOK_PLUGINS:-10000} enabled Plugins on fake nodes"
cargo run -q --locked -p airlock-e2e --bin kwok-bench
