#!/usr/bin/env bash
# Brings up the local single-node Kubernetes cluster from upstream components:
# registry, containerd, etcd, kube-apiserver, controller-manager, scheduler, kubelet, kube-proxy,
# kube-router (NetworkPolicy). Idempotent: a healthy running cluster is reused as it is; the
# leftovers of a killed run are cleaned first (down.sh), then everything starts fresh.
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"

[ "$(id -u)" -eq 0 ] || die "the local cluster runs kubelet and containerd and needs root"

if "$CLUSTER_DIR/status.sh" --quiet; then
  log "cluster already running and healthy; reusing it"
  "$CLUSTER_DIR/status.sh"
  exit 0
fi

"$CLUSTER_DIR/deps.sh"
"$CLUSTER_DIR/build.sh" kubernetes etcd kube_router crane

K8S_BIN=$(bin_dir kubernetes "$K8S_VERSION")
ETCD_BIN=$(bin_dir etcd "$ETCD_VERSION")
ROUTER_BIN=$(bin_dir kube-router "$KUBE_ROUTER_VERSION")
CRANE=$(bin_dir crane "$CRANE_VERSION")/crane

if [ -d "$STATE" ]; then
  log "found state of an earlier cluster that is not healthy; cleaning it up first"
  "$CLUSTER_DIR/down.sh"
fi
mkdir -p "$PIDS" "$LOGS" "$PKI" "$STATE/etc"
echo "$CLUSTER_CONFIG_VERSION" >"$STATE/config-version"

# start <name> <cmd...>: a daemon in its own session, PID recorded, log in $LOGS/<name>.log
start() {
  local name=$1; shift
  setsid "$@" >"$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! >"$PIDS/$name.pid"
}
alive() { [ -f "$PIDS/$1.pid" ] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }
# wait_for <what> <seconds> <daemon or -> <cmd...>
wait_for() {
  local what=$1 secs=$2 daemon=$3; shift 3
  local i=0
  until "$@" >/dev/null 2>&1; do
    if [ "$daemon" != - ] && ! alive "$daemon"; then
      tail -n 30 "$LOGS/$daemon.log" >&2 || true
      die "$daemon exited while waiting for $what; its log is $LOGS/$daemon.log"
    fi
    i=$((i + 1))
    [ "$i" -le "$secs" ] || { tail -n 30 "$LOGS/$daemon.log" >&2 2>/dev/null || true; die "timed out after ${secs}s waiting for $what"; }
    sleep 1
  done
  log "$what: ready"
}

# --- host ---------------------------------------------------------------------------------------
log "preparing the host (shared mounts, sysctls, $NODE_IP on lo as $NODE_IF)"
mount --make-rshared /
sysctl -qw net.ipv4.ip_forward=1
sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || log "warning: br_netfilter sysctl missing; NetworkPolicy between pods may not be enforced"
# buildah/podman leave a bridge on 10.88/16 that steals pod routes (research notes); not ours, only warn.
ip link show cni-podman0 >/dev/null 2>&1 && log "warning: cni-podman0 exists (from podman/buildah); it may disturb pod routing"
# The kernel here has no dummy interface driver, so the node address lives on the loopback device
# under its own label; Linux accepts a local address on any interface, so pods reach it too.
ip addr replace "$NODE_IP/32" dev lo label "$NODE_IF"

# --- registry -----------------------------------------------------------------------------------
mkdir -p "$AIRLOCK_CACHE/registry"
cat >"$STATE/etc/registry.yml" <<EOF
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $AIRLOCK_CACHE/registry}
  delete: {enabled: true}
http: {addr: "$REGISTRY"}
EOF
start registry docker-registry serve "$STATE/etc/registry.yml"
wait_for "registry at $REGISTRY" 30 registry curl -sf "http://$REGISTRY/v2/"

# The private registry: same server, HTTP Basic auth from an htpasswd file. The password is made
# once per cluster state and kept there (root only), with a docker config for crane/cosign. The
# kubelet gets the credentials from the pods' imagePullSecrets only, never from containerd's config.
mkdir -p "$AIRLOCK_CACHE/registry-private" "$PRIVATE_REGISTRY_DOCKER_CONFIG"
chmod 700 "$PRIVATE_REGISTRY_STATE" "$PRIVATE_REGISTRY_DOCKER_CONFIG"
if [ ! -s "$PRIVATE_REGISTRY_STATE/password" ]; then
  (umask 077; openssl rand -hex 16 >"$PRIVATE_REGISTRY_STATE/password")
fi
PRIVATE_REGISTRY_PASSWORD=$(cat "$PRIVATE_REGISTRY_STATE/password")
# bcrypt is the only hash the registry accepts; htpasswd reports success on stderr, so keep it for errors.
out=$(htpasswd -B -i -c "$PRIVATE_REGISTRY_STATE/htpasswd" "$PRIVATE_REGISTRY_USER" <<<"$PRIVATE_REGISTRY_PASSWORD" 2>&1) ||
  die "htpasswd (Debian package apache2-utils) failed: $out"
(umask 077; cat >"$PRIVATE_REGISTRY_DOCKER_CONFIG/config.json" <<EOF
{"auths":{"$PRIVATE_REGISTRY":{"auth":"$(printf '%s:%s' "$PRIVATE_REGISTRY_USER" "$PRIVATE_REGISTRY_PASSWORD" | base64 -w0)"}}}
EOF
)
cat >"$STATE/etc/registry-private.yml" <<EOF
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $AIRLOCK_CACHE/registry-private}
  delete: {enabled: true}
http: {addr: "$PRIVATE_REGISTRY"}
auth:
  htpasswd: {realm: airlock-e2e, path: $PRIVATE_REGISTRY_STATE/htpasswd}
EOF
start registry-private docker-registry serve "$STATE/etc/registry-private.yml"
# Ready when it answers, and asks anonymous clients to authenticate.
wait_for "private registry at $PRIVATE_REGISTRY" 30 registry-private \
  sh -c "curl -s -o /dev/null -w '%{http_code}' 'http://$PRIVATE_REGISTRY/v2/' | grep -qx 401"
curl -sf -o /dev/null -u "$PRIVATE_REGISTRY_USER:$PRIVATE_REGISTRY_PASSWORD" "http://$PRIVATE_REGISTRY/v2/" ||
  die "the private registry at $PRIVATE_REGISTRY refuses its own credentials; its log is $LOGS/registry-private.log"

# The sandbox ("pause") image: a 20 KB static binary, built locally, never pulled from outside.
PAUSE_IMAGE=$REGISTRY/pause:3.10
if ! "$CRANE" digest --insecure "$PAUSE_IMAGE" >/dev/null 2>&1; then
  work=$(mktemp -d)
  musl-gcc -Os -static -o "$work/pause" "$CLUSTER_DIR/files/pause.c"
  strip "$work/pause"
  tar --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work" -cf "$work/layer.tar" pause
  "$CRANE" append --insecure -f "$work/layer.tar" -t "$PAUSE_IMAGE" >/dev/null
  "$CRANE" mutate --insecure --entrypoint=/pause --user 65535:65535 "$PAUSE_IMAGE" >/dev/null
  rm -rf "$work"
  log "pause image pushed to $PAUSE_IMAGE"
fi

# --- containerd ---------------------------------------------------------------------------------
CTRD_ROOT=$STATE/containerd
CTRD_RUN=/run/airlock-containerd
CTRD_SOCK=$CTRD_RUN/containerd.sock
mkdir -p "$CTRD_ROOT" "$CTRD_RUN" "$STATE/etc/cni"
# Both registries over plain HTTP. No credentials here: the private one's come with each pull
# (the kubelet passes the pod's imagePullSecrets through CRI).
for r in "$REGISTRY" "$PRIVATE_REGISTRY"; do
  mkdir -p "$STATE/etc/certs.d/$r"
  cat >"$STATE/etc/certs.d/$r/hosts.toml" <<EOF
server = "http://$r"
[host."http://$r"]
  capabilities = ["pull", "resolve", "push"]
  skip_verify = true
EOF
done
cat >"$STATE/etc/cni/10-airlock.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "airlock-pods",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": true, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$STATE/cni-ipam",
        "ranges": [[{"subnet": "$NODE_POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
EOF
cat >"$STATE/etc/containerd.toml" <<EOF
version = 2
root = "$CTRD_ROOT"
state = "$CTRD_RUN/state"
[grpc]
  address = "$CTRD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # No CAP_SYS_RESOURCE on this VM: a negative oom_score_adj for the sandbox makes every
  # RunPodSandbox fail, so clamp it to containerd's own score.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/etc/cni"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$STATE/etc/certs.d"
EOF
start containerd containerd --config "$STATE/etc/containerd.toml"
wait_for "containerd" 30 containerd ctr --address "$CTRD_SOCK" version

# --- PKI, etcd, control plane -------------------------------------------------------------------
"$CLUSTER_DIR/files/pki.sh" "$PKI" "$NODE_NAME" "$NODE_IP" "$KUBERNETES_SVC_IP"
log "PKI and kubeconfigs written to $PKI"

start etcd "$ETCD_BIN/etcd" --name airlock --data-dir "$STATE/etcd" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster airlock=http://127.0.0.1:2380 --log-level warn
wait_for "etcd" 60 etcd curl -sf http://127.0.0.1:2379/health

# PodNodeSelector and PodTolerationRestriction (upstream plugins, off by default) let a namespace's
# annotations put its pods on given nodes: the KWOK bench confines its pods to fake nodes with them
# (e2e/src/kwok.rs). A namespace without those annotations is not affected.
ADMISSION_PLUGINS=NodeRestriction,PodNodeSelector,PodTolerationRestriction
start kube-apiserver "$K8S_BIN/kube-apiserver" \
  --etcd-servers=http://127.0.0.1:2379 --bind-address="$NODE_IP" --secure-port=6443 \
  --advertise-address="$NODE_IP" --service-cluster-ip-range="$SERVICE_CIDR" --allow-privileged=true \
  --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" --client-ca-file="$PKI/ca.crt" \
  --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
  --authorization-mode=Node,RBAC --enable-admission-plugins="$ADMISSION_PLUGINS" \
  --kubelet-preferred-address-types=InternalIP --service-node-port-range=30000-32767 --profiling=false
KUBECONFIG_ADMIN=$PKI/admin.kubeconfig
kc() { "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }
wait_for "kube-apiserver" 120 kube-apiserver kc get --raw /readyz

start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
  --kubeconfig="$PKI/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$PKI/controller-manager.kubeconfig" --authorization-kubeconfig="$PKI/controller-manager.kubeconfig" \
  --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" --use-service-account-credentials=true \
  --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
  --service-cluster-ip-range="$SERVICE_CIDR" --allocate-node-cidrs=true --cluster-cidr="$POD_CIDR" \
  --node-cidr-mask-size=24 --leader-elect=false --bind-address=127.0.0.1
start kube-scheduler "$K8S_BIN/kube-scheduler" --kubeconfig="$PKI/scheduler.kubeconfig" \
  --authentication-kubeconfig="$PKI/scheduler.kubeconfig" --authorization-kubeconfig="$PKI/scheduler.kubeconfig" \
  --leader-elect=false --bind-address=127.0.0.1

# kube-router watches pods, namespaces, nodes and NetworkPolicies with its own identity.
kc apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: airlock-local:kube-router}
rules:
- apiGroups: [""]
  resources: [namespaces, pods, services, nodes, endpoints]
  verbs: [get, list, watch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: airlock-local:kube-router}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: airlock-local:kube-router}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: kube-router}]
EOF

# --- node ---------------------------------------------------------------------------------------
KUBELET_ROOT=/var/lib/kubelet
mkdir -p "$KUBELET_ROOT/seccomp/profiles"
# Localhost seccomp profiles are resolved relative to <kubelet root>/seccomp.
cp "$CLUSTER_DIR/files/deny-mkdir.json" "$KUBELET_ROOT/seccomp/profiles/airlock-deny-mkdir.json"
cat >"$STATE/etc/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
healthzBindAddress: 127.0.0.1
cgroupDriver: cgroupfs
cgroupsPerQOS: true
cgroupRoot: /
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$CTRD_SOCK
imageServiceEndpoint: unix://$CTRD_SOCK
seccompDefault: true
# Bounds every pod's processes and threads: a plugin's fork bomb stops here, not at the node.
podPidsLimit: 512
oomScoreAdj: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
readOnlyPort: 0
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
evictionHard: {memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%, nodefs.inodesFree: 2%}
imageGCHighThresholdPercent: 98
imageGCLowThresholdPercent: 95
maxPods: 250
serializeImagePulls: false
EOF
start kubelet "$K8S_BIN/kubelet" --config="$STATE/etc/kubelet.yaml" --kubeconfig="$PKI/kubelet.kubeconfig" \
  --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --root-dir="$KUBELET_ROOT"
wait_for "node $NODE_NAME registered" 120 kubelet kc get node "$NODE_NAME"
wait_for "node $NODE_NAME Ready" 180 kubelet \
  sh -c "'$K8S_BIN/kubectl' --kubeconfig '$KUBECONFIG_ADMIN' get node '$NODE_NAME' -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"

cat >"$STATE/etc/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $PKI/kube-proxy.kubeconfig}
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
oomScoreAdj: 0
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false}
EOF
start kube-proxy "$K8S_BIN/kube-proxy" --config="$STATE/etc/kube-proxy.yaml"
wait_for "kube-proxy" 60 kube-proxy curl -sf http://127.0.0.1:10256/healthz

start kube-router "$ROUTER_BIN/kube-router" --kubeconfig="$PKI/kube-router.kubeconfig" \
  --hostname-override="$NODE_NAME" --run-firewall=true --run-router=false --run-service-proxy=false \
  --enable-cni=false --enable-ipv6=false --service-cluster-ip-range="$SERVICE_CIDR" \
  --health-port=20244 --metrics-port=0 --iptables-sync-period=5s
wait_for "kube-router (NetworkPolicy)" 60 kube-router curl -sf http://127.0.0.1:20244/healthz

# Namespaces are created by the tests; the default ServiceAccount must exist before pods are admitted.
wait_for "default ServiceAccount" 60 kube-controller-manager kc -n default get serviceaccount default

ln -sf "$KUBECONFIG_ADMIN" "$STATE/kubeconfig"
log "cluster is up"
"$CLUSTER_DIR/status.sh"
