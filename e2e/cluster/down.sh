#!/usr/bin/env bash
# Stops exactly what up.sh started (by recorded PID) and removes what it created: containers,
# mounts, network namespaces, interfaces, iptables chains, ipsets, cgroups and state. Safe to run
# twice and after a run that was killed half-way.
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"
[ "$(id -u)" -eq 0 ] || die "down needs root"

CTRD_RUN=/run/airlock-containerd
CTRD_SOCK=$CTRD_RUN/containerd.sock
K8S_BIN=$(bin_dir kubernetes "$K8S_VERSION")
ROUTER_BIN=$(bin_dir kube-router "$KUBE_ROUTER_VERSION")

stop() { # stop <name>: SIGTERM the recorded PID's process group, then SIGKILL after 10 s
  local f=$PIDS/$1.pid pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    log "stopped $1 (pid $pid)"
  fi
  rm -f "$f"
}

# The node agents first, so nothing restarts the pods we are about to remove.
for d in kube-router kube-proxy kubelet kube-scheduler kube-controller-manager; do stop "$d"; done

# Pods: kill and delete every container and sandbox of our containerd, which also tears down
# their network namespaces through CNI and unmounts their root filesystems.
if [ -S "$CTRD_SOCK" ] && [ -f "$PIDS/containerd.pid" ] && kill -0 "$(cat "$PIDS/containerd.pid")" 2>/dev/null; then
  ctr_() { ctr --address "$CTRD_SOCK" -n k8s.io "$@"; }
  for t in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
  sleep 1
  for t in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$t" >/dev/null 2>&1 || true; done
  for c in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$c" >/dev/null 2>&1 || true; done
fi
# Shims of our containerd survive it; find them by the socket they were given.
for p in $(pgrep -f "containerd-shim-runc-v2 .*-address $CTRD_SOCK" 2>/dev/null); do
  pkill -KILL -P "$p" 2>/dev/null || true; kill -KILL "$p" 2>/dev/null || true
done
# Any container process still alive is in a kubepods cgroup: kill it there.
for cg in /sys/fs/cgroup/pids/kubepods /sys/fs/cgroup/memory/kubepods; do
  if [ -d "$cg" ]; then
    # shellcheck disable=SC2038 # xargs reads the PIDs inside the cgroup.procs files, not file names
    find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
  fi
done
for d in containerd etcd kube-apiserver registry registry-private jaeger event-sink; do stop "$d"; done
stop kube-apiserver; stop etcd

# NetworkPolicy and Service rules: each tool cleans its own chains and ipsets.
if [ -x "$ROUTER_BIN/kube-router" ]; then "$ROUTER_BIN/kube-router" --cleanup-config >/dev/null 2>&1 || true; fi
if [ -x "$K8S_BIN/kube-proxy" ]; then "$K8S_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true; fi
# Whatever chains remain (CNI portmap/masquerade, kubelet canaries, kube-router leftovers).
for table in filter nat mangle raw; do
  rules=$(iptables-save -t "$table" 2>/dev/null) || continue
  # Jumps from the built-in chains into ours first, so our chains can be deleted.
  { echo "$rules" | grep -E -- '^-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) .*-j (CNI-|KUBE-)' || true; } |
    sed 's/^-A /-D /' | while read -r r; do
      # shellcheck disable=SC2086
      eval iptables -t "$table" $r 2>/dev/null || true
    done
  for ch in $(echo "$rules" | sed -n 's/^:\(\(CNI\|KUBE\)-[^ ]*\) .*/\1/p'); do
    iptables -t "$table" -F "$ch" 2>/dev/null || true
  done
  for ch in $(echo "$rules" | sed -n 's/^:\(\(CNI\|KUBE\)-[^ ]*\) .*/\1/p'); do
    iptables -t "$table" -X "$ch" 2>/dev/null || true
  done
done
# The signature e2e's "registry down" rule, if a killed run left it.
while iptables -t raw -S PREROUTING 2>/dev/null | grep -q airlock-e2e-registry-block; do
  r=$(iptables -t raw -S PREROUTING | grep airlock-e2e-registry-block | head -1 | sed 's/^-A /-D /')
  # shellcheck disable=SC2086
  eval iptables -t raw $r || break
done
for s in $(ipset list -n 2>/dev/null | grep -E '^(KUBE-|kube-router)' || true); do ipset destroy "$s" 2>/dev/null || true; done

# Mounts under our directories (kubelet volumes, container rootfs, network namespaces), deepest first.
while read -r m; do
  umount -l "$m" 2>/dev/null || true
done < <(awk '{print $5}' /proc/self/mountinfo | grep -E "^(/var/lib/kubelet|$STATE|$CTRD_RUN|/run/netns/cni-|/var/run/netns/cni-)" | sort -r)
for ns in /run/netns/cni-*; do [ -e "$ns" ] && { ip netns delete "$(basename "$ns")" 2>/dev/null || rm -f "$ns"; }; done

ip link show "$BRIDGE" >/dev/null 2>&1 && ip link delete "$BRIDGE"
for v in $(ip -o link show type veth 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep '^veth' || true); do
  if [ "$(cat "/sys/class/net/$v/master/ifindex" 2>/dev/null)" = "" ]; then ip link delete "$v" 2>/dev/null || true; fi
done
ip addr show dev lo | grep -q " $NODE_IP/32 " && ip addr del "$NODE_IP/32" dev lo
ip link show kube-dummy-if >/dev/null 2>&1 && ip link delete kube-dummy-if

# Pod cgroups (kubepods hierarchy), leaves first.
for ctl in /sys/fs/cgroup/*/; do
  if [ -d "$ctl/kubepods" ]; then find "$ctl/kubepods" -depth -type d -exec rmdir {} \; 2>/dev/null || true; fi
done

rm -rf "$STATE" "$CTRD_RUN" /var/lib/kubelet
log "local cluster stopped and cleaned up"
