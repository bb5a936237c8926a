#!/usr/bin/env bash
# Benchmarks: image verification (cold vs cached), the router against direct shim calls, and the
# controller at scale: N disabled Plugins (default 1000) in one namespace.
# Prints time to steady state, Kubernetes API requests per Plugin, API writes per minute at steady
# state (goal: 0) against the same operator idle before the Plugins existed (the baseline), and
# the operator's resident memory. Counts come from the operator's own request counter.
# shellcheck source=SCRIPTDIR/cluster/lib.sh
. "$(dirname "$0")/cluster/lib.sh"
ROOT=$(cd "$CLUSTER_DIR/../.." && pwd)
export KUBECONFIG=${KUBECONFIG:-$STATE/kubeconfig}
# shellcheck source=/dev/null
. "$ROOT/target/e2e/images.env"
N=${BENCH_PLUGINS:-1000}
NS=airlock-bench
STEADY_SECONDS=${BENCH_STEADY_SECONDS:-60}

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

# --- the router's cost: the same call direct to the shim and through the router, and a pipeline --
log "router bench: direct to the shim vs through the router (3 data-formatter plugins)"
cargo run -q --locked -p airlock-e2e --bin router-bench

[ "$N" -gt 0 ] || exit 0

"$ROOT/e2e/helm-install.sh"
# The leader's metrics (the standby reconciles nothing).
# After an upgrade the Lease may still name a pod that is gone until a new leader takes over.
leader_metrics() {
  local holder ip
  for _ in $(seq 1 60); do
    holder=$(kubectl -n airlock-system get lease airlock-operator -o jsonpath='{.spec.holderIdentity}' 2>/dev/null)
    ip=$(kubectl -n airlock-system get pod "$holder" -o jsonpath='{.status.podIP}' 2>/dev/null) &&
      [ -n "$ip" ] && curl -sf "http://$ip:8080/metrics" && return 0
    sleep 1
  done
  die "no operator holds the leader Lease"
}
metric_sum() { # metric_sum <metrics text> <name> [label filter regex]
  echo "$1" | grep -E "^$2(\{|\s)" | grep -E -- "${3:-.}" | awk '{s += $NF} END {printf "%.0f", s}'
}
writes() { metric_sum "$1" airlock_kube_requests_total 'method="(POST|PUT|PATCH|DELETE)"'; }
requests() { metric_sum "$1" airlock_kube_requests_total; }

kubectl -n "$NS" delete plugins --all --ignore-not-found --wait=true --timeout=600s >/dev/null 2>&1 || true
kubectl delete namespace "$NS" --ignore-not-found --wait=true --timeout=600s >/dev/null
kubectl apply -f "$ROOT/examples/trust-policy.yaml" >/dev/null
kubectl create namespace "$NS" >/dev/null
kubectl label namespace "$NS" airlock.dev/sandbox=true >/dev/null
kubectl -n "$NS" create configmap hello-bundle --from-file=bundle.tar.gz="$AIRLOCK_HELLO_BUNDLE" >/dev/null

log "baseline: operator idle for ${STEADY_SECONDS}s"
m0=$(leader_metrics)
sleep "$STEADY_SECONDS"
m1=$(leader_metrics)
base_writes=$(( $(writes "$m1") - $(writes "$m0") ))

log "creating $N disabled Plugins"
# Straight to the API server with 8 parallel clients: kubectl's client-side rate limit (5 QPS)
# would make the creation, not the operator, the thing measured.
API=https://$NODE_IP:6443
body() {
  printf '{"apiVersion":"airlock.dev/v1alpha1","kind":"Plugin","metadata":{"name":"bench-%s"},"spec":{"enabled":false,"version":"1.0.0","image":"%s","bundle":{"source":{"configMapRef":{"name":"hello-bundle"}}},"pluginApiVersion":1,"hooks":[{"name":"transform"}],"permissions":["log"]}}' "$1" "$AIRLOCK_HELLO_IMAGE"
}
export -f body
export API NS AIRLOCK_HELLO_IMAGE PKI
before=$(leader_metrics)
t0=$(date +%s.%N)
# shellcheck disable=SC2016 # single quotes on purpose: the inner bash expands $PKI, $API and $NS (exported above)
seq 1 "$N" | xargs -P 8 -I{} bash -c 'body {} | curl -sf -o /dev/null --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
  -H "Content-Type: application/json" --data-binary @- "$API/apis/airlock.dev/v1alpha1/namespaces/$NS/plugins"'
t_created=$(date +%s.%N)
while :; do
  done_count=$(kubectl -n "$NS" get plugins -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | grep -c '^Disabled$' || true)
  [ "$done_count" -ge "$N" ] && break
  sleep 1
done
t1=$(date +%s.%N)
after=$(leader_metrics)
log "steady state: watching for ${STEADY_SECONDS}s"
sleep "$STEADY_SECONDS"
steady=$(leader_metrics)

reqs=$(( $(requests "$after") - $(requests "$before") ))
wr=$(( $(writes "$after") - $(writes "$before") ))
steady_writes=$(( $(writes "$steady") - $(writes "$after") ))
rss=$(metric_sum "$steady" process_resident_memory_bytes)
printf '\n== airlock controller bench: %d disabled Plugins ==\n' "$N"
awk -v n="$N" -v t0="$t0" -v tc="$t_created" -v t1="$t1" -v reqs="$reqs" -v wr="$wr" -v sw="$steady_writes" \
    -v bw="$base_writes" -v secs="$STEADY_SECONDS" -v rss="$rss" 'BEGIN {
  printf "Plugins created in:            %.1f s\n", tc - t0
  printf "time to steady state:          %.1f s from the first create (%.1f Plugins/s)\n", t1 - t0, n / (t1 - t0)
  printf "API requests per Plugin:       %.1f (writes %.1f)\n", reqs / n, wr / n
  printf "API writes/min, steady state:  %.1f   (baseline, no Plugins: %.1f; ratio %s)\n", sw * 60 / secs, bw * 60 / secs, (bw > 0 ? sprintf("%.1f", sw / bw) : "n/a")
  printf "operator RSS:                  %.1f MiB\n", rss / 1048576
}'
log "cleaning up"
# Plugins first, while their bundle ConfigMap still exists; then the namespace.
kubectl -n "$NS" delete plugins --all --wait=true --timeout=600s >/dev/null
kubectl delete namespace "$NS" --wait=true --timeout=600s >/dev/null
