#!/usr/bin/env bash
# Reports whether the local cluster is running and healthy; exit 0 only when every daemon we
# started is alive, the API server is ready and the node is Ready. --quiet: exit code only.
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"
quiet=false; [ "${1:-}" = --quiet ] && quiet=true
say() { $quiet || echo "$@"; }
DAEMONS="registry registry-private containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kube-router"
ok=true
for d in $DAEMONS; do
  if [ -f "$PIDS/$d.pid" ] && kill -0 "$(cat "$PIDS/$d.pid")" 2>/dev/null; then
    say "  $d: running (pid $(cat "$PIDS/$d.pid"))"
  else
    say "  $d: not running"; ok=false
  fi
done
if $ok && [ "$(cat "$STATE/config-version" 2>/dev/null)" != "$CLUSTER_CONFIG_VERSION" ]; then
  say "  configuration: started with an older one (want version $CLUSTER_CONFIG_VERSION)"; ok=false
fi
KUBECTL=$(bin_dir kubernetes "$K8S_VERSION")/kubectl
if $ok; then
  if [ "$("$KUBECTL" --kubeconfig "$PKI/admin.kubeconfig" get --raw /readyz 2>/dev/null)" != ok ]; then
    say "  kube-apiserver: not ready"; ok=false
  elif ! "$KUBECTL" --kubeconfig "$PKI/admin.kubeconfig" get node "$NODE_NAME" \
      -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -qx True; then
    say "  node $NODE_NAME: not Ready"; ok=false
  fi
fi
if $ok; then
  say ""
  say "The local cluster is up. Use it with:"
  say "  export KUBECONFIG=$STATE/kubeconfig PATH=$(bin_dir kubernetes "$K8S_VERSION"):\$PATH"
  say "  kubectl get nodes"
  say "Registry: http://$REGISTRY (plain HTTP; push with: crane --insecure)"
  say "Private registry: http://$PRIVATE_REGISTRY (HTTP Basic, user $PRIVATE_REGISTRY_USER; password in $PRIVATE_REGISTRY_STATE/password;"
  say "  push with: DOCKER_CONFIG=$PRIVATE_REGISTRY_DOCKER_CONFIG crane --insecure)"
  say "Logs: $LOGS/<component>.log    Stop and clean up: make cluster-down"
  exit 0
fi
say "The local cluster is not (fully) running. Start it with: make cluster-up"
exit 1
