#!/usr/bin/env bash
# The demo: a pod from the local registry runs on the local cluster under the restricted Pod
# Security profile, and its output is read back. Later issues extend this to Airlock itself.
. "$(dirname "$0")/cluster/lib.sh"
KUBECTL="kubectl --kubeconfig ${KUBECONFIG:-$STATE/kubeconfig}"
NS=airlock-demo
IMAGE=${AIRLOCK_E2E_REGISTRY:-$REGISTRY}/airlock/e2e-probe:dev
log "creating namespace $NS (Pod Security: restricted)"
$KUBECTL create namespace "$NS" --dry-run=client -o yaml | $KUBECTL apply -f - >/dev/null
$KUBECTL label namespace "$NS" --overwrite pod-security.kubernetes.io/enforce=restricted >/dev/null
$KUBECTL -n "$NS" delete pod demo --ignore-not-found >/dev/null
log "running a demo pod from $IMAGE"
$KUBECTL -n "$NS" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: demo}
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  containers:
  - name: demo
    image: $IMAGE
    args: [echo, "hello from a sandboxed pod on the local Airlock cluster"]
    securityContext:
      runAsNonRoot: true
      allowPrivilegeEscalation: false
      capabilities: {drop: [ALL]}
      seccompProfile: {type: RuntimeDefault}
YAML
$KUBECTL -n "$NS" wait pod/demo --for=jsonpath='{.status.phase}'=Succeeded --timeout=120s >/dev/null
said=$($KUBECTL -n "$NS" logs demo)
log "the pod says: $said"
$KUBECTL delete namespace "$NS" --wait=false >/dev/null
log "demo done; the cluster keeps running (make cluster-down stops it)"
