#!/usr/bin/env bash
# The demo: install Airlock with Helm into the local cluster, apply the hello plugin and its trust
# policy, wait until it is Active in a Pod Security "restricted" namespace, and call its hook.
. "$(dirname "$0")/cluster/lib.sh"
ROOT=$(cd "$CLUSTER_DIR/../.." && pwd)
export KUBECONFIG=${KUBECONFIG:-$STATE/kubeconfig}
# shellcheck source=/dev/null
. "$ROOT/target/e2e/images.env"
NS=airlock-demo

log "installing Airlock with Helm (namespace airlock-system)"
"$ROOT/e2e/helm-install.sh"
kubectl -n airlock-system get deploy airlock-operator

log "trust policy: unsigned plugins allowed in namespaces labelled airlock.dev/sandbox=true"
kubectl apply -f "$ROOT/examples/trust-policy.yaml" >/dev/null

log "namespace $NS (Pod Security: restricted) with the hello bundle in a ConfigMap"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace "$NS" --overwrite airlock.dev/sandbox=true \
  pod-security.kubernetes.io/enforce=restricted >/dev/null
kubectl -n "$NS" create configmap hello-bundle --from-file=bundle.tar.gz="$AIRLOCK_HELLO_BUNDLE" \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null

log "applying examples/hello-plugin.yaml"
sed "s|image: .*examples/hello:1.0.0|image: $AIRLOCK_HELLO_IMAGE|" "$ROOT/examples/hello-plugin.yaml" |
  kubectl -n "$NS" apply -f - >/dev/null
kubectl -n "$NS" wait plugin/hello --for=jsonpath='{.status.phase}'=Active --timeout=180s >/dev/null
kubectl -n "$NS" get plugins
kubectl -n "$NS" get pods -l airlock.dev/plugin=hello -o wide

pod_ip=$(kubectl -n "$NS" get pods -l airlock.dev/plugin=hello -o jsonpath='{.items[0].status.podIP}')
log "invoking hook transform on the plugin (from the node; plugin pods admit only the router and the node)"
for _ in $(seq 1 30); do
  if out=$("$ROOT/target/debug/airlockctl" invoke --plugin-address "http://$pod_ip:50051" \
      --hook transform --payload '{"name":"platform team"}' 2>/dev/null); then
    echo "$out"
    log "demo done: the plugin keeps running; kubectl -n $NS describe plugin hello shows its conditions"
    exit 0
  fi
  sleep 1
done
die "the hook did not answer; see: kubectl -n $NS logs deploy/hello"
