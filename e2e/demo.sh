#!/usr/bin/env bash
# The demo: install Airlock with Helm into the local cluster, apply the hello plugin and its trust
# policy, wait until it is Active in a Pod Security "restricted" namespace, and call its hook.
# shellcheck source=SCRIPTDIR/cluster/lib.sh
. "$(dirname "$0")/cluster/lib.sh"
ROOT=$(cd "$CLUSTER_DIR/../.." && pwd)
export KUBECONFIG=${KUBECONFIG:-$STATE/kubeconfig}
# shellcheck source=/dev/null
. "$ROOT/target/e2e/images.env"
NS=airlock-demo

log "installing Airlock with Helm (namespace airlock-system)"
"$ROOT/e2e/helm-install.sh"
kubectl -n airlock-system get deploy airlock-operator airlock-router

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

log "a caller: the ServiceAccount hello-client, granted hello's transform by a PluginCallerBinding"
# The router serves authenticated callers only (a ServiceAccount token for the audience
# airlock-router) and only what the plugin's namespace grants them (default deny).
kubectl -n "$NS" apply -f "$ROOT/examples/hello-caller.yaml" >/dev/null
AIRLOCK_TOKEN=$(kubectl -n "$NS" create token hello-client --audience airlock-router --duration 1h)
export AIRLOCK_TOKEN

AIRLOCKCTL=$ROOT/target/debug/airlockctl
# `kubectl airlock` is the same binary as a kubectl plugin (kubectl-airlock on PATH). It reaches
# the router through a port-forward it opens with the kubeconfig: no address, no kubectl
# port-forward beside it.
PATH="$ROOT/target/debug:$PATH"
unset AIRLOCK_ROUTER
kubectl -n airlock-system rollout status deploy/airlock-router --timeout=120s >/dev/null
invoke() { # invoke <namespace>
  local out
  log "invoking hook transform on $1/hello with kubectl airlock (through the router, port-forwarded) as $NS/hello-client"
  # The router learns of the plugin (and of the binding) from its watches a moment after the
  # status says Active.
  for _ in $(seq 1 30); do
    if out=$(kubectl airlock invoke "$1/hello" transform --payload '{"name":"platform team"}' 2>/dev/null); then
      echo "$out"
      return 0
    fi
    sleep 1
  done
  kubectl airlock invoke "$1/hello" transform --payload '{"name":"platform team"}' ||
    die "the hook did not answer; see: kubectl -n $1 logs deploy/hello"
}
invoke "$NS"

# --- the same plugin, signed: cosign for the image, airlockctl for the bundle --------------------
SNS=airlock-demo-signed
KEYS=$(mktemp -d)
trap 'rm -rf "$KEYS"' EXIT
log "signing: a cosign key pair (image) and an airlockctl key pair (bundle) in $KEYS"
(cd "$KEYS" && COSIGN_PASSWORD='' cosign generate-key-pair >/dev/null 2>&1)
"$AIRLOCKCTL" keygen demo --dir "$KEYS" >/dev/null
DIGEST=$(crane digest --insecure "$AIRLOCK_HELLO_IMAGE")
REPO=${AIRLOCK_HELLO_IMAGE%:*}
log "cosign sign $REPO@$DIGEST (key-based, no transparency log)"
(cd "$KEYS" && COSIGN_PASSWORD='' cosign sign --key cosign.key --tlog-upload=false \
  --allow-http-registry -y "$REPO@$DIGEST" >/dev/null 2>&1) || die "cosign sign failed"
log "packing, signing, verifying and pushing the bundle (bound to $DIGEST)"
mkdir -p "$KEYS/bundle"
cp "$ROOT/examples/hello/plugin.yaml" "$KEYS/bundle/plugin.yaml"
echo "imageDigest: $DIGEST" >>"$KEYS/bundle/plugin.yaml"
"$AIRLOCKCTL" bundle pack "$KEYS/bundle" -o "$KEYS/hello.tar.gz"
"$AIRLOCKCTL" sign --key "$KEYS/demo.key" "$KEYS/hello.tar.gz"
"$AIRLOCKCTL" verify --key "$KEYS/demo.pub" "$KEYS/hello.tar.gz"
BUNDLE_REF=$REGISTRY/examples/hello-bundle:1.0.0
"$AIRLOCKCTL" bundle push "$KEYS/hello.tar.gz" "$BUNDLE_REF" --insecure-registry "$REGISTRY"

log "trust policy demo-signed: the two public keys at trust level Trusted, no unsigned plugins"
{
  printf 'apiVersion: airlock.dev/v1alpha1\nkind: PluginTrustPolicy\nmetadata: {name: demo-signed}\n'
  printf 'spec:\n  namespaces: {matchLabels: {airlock.dev/demo-signed: "true"}}\n  keys:\n'
  printf '    - name: demo\n      trustLevel: Trusted\n      ed25519: |\n'
  sed 's/^/        /' "$KEYS/demo.pub"
  printf '      cosign: |\n'
  sed 's/^/        /' "$KEYS/cosign.pub"
  printf '  trustLevels:\n    Trusted: {permissions: [log], maxMemory: 64Mi, maxCpu: 250m, maxTimeout: 2s}\n'
} | kubectl apply -f - >/dev/null
kubectl create namespace "$SNS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace "$SNS" --overwrite airlock.dev/demo-signed=true \
  pod-security.kubernetes.io/enforce=restricted >/dev/null
log "applying the hello plugin with its bundle from the OCI artifact $BUNDLE_REF"
sed -e "s|image: .*examples/hello:1.0.0|image: $AIRLOCK_HELLO_IMAGE|" \
    -e "s|configMapRef: {name: hello-bundle}|oci: {ref: \"$BUNDLE_REF\"}|" \
    "$ROOT/examples/hello-plugin.yaml" | kubectl -n "$SNS" apply -f - >/dev/null
kubectl -n "$SNS" wait plugin/hello --for=jsonpath='{.status.phase}'=Active --timeout=180s >/dev/null ||
  die "the signed plugin did not become Active: kubectl -n $SNS describe plugin hello"
kubectl -n "$SNS" get plugins
kubectl -n "$SNS" get plugin hello \
  -o jsonpath='{range .status.conditions[?(@.type=="Verified")]}Verified: {.message}{"\n"}{end}'
log "$SNS grants $NS/hello-client its hello: a call across namespaces needs the target's consent"
kubectl -n "$SNS" apply -f - >/dev/null <<EOF
apiVersion: airlock.dev/v1alpha1
kind: PluginCallerBinding
metadata: {name: from-$NS}
spec:
  callers: [{serviceAccount: hello-client, namespace: $NS}]
  plugins: [hello]
  hooks: [transform]
EOF
invoke "$SNS"
log "what $NS/hello-client may call through the router:"
kubectl airlock plugins
kubectl airlock status -n "$SNS" hello
log "demo done: both plugins keep running; kubectl -n $SNS describe plugin hello shows the conditions"
