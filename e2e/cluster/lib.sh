# Shared helpers for the local-cluster scripts. Sourced, never executed.
# shellcheck shell=bash
# The variables set here are settings of the scripts that source this file, not used in it.
# shellcheck disable=SC2034
set -euo pipefail

CLUSTER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Found next to this file, whether it is checked alone or through a script in e2e/ or e2e/cluster/.
# shellcheck source-path=SCRIPTDIR source-path=SCRIPTDIR/cluster source=versions.env
. "$CLUSTER_DIR/versions.env"

AIRLOCK_CACHE=${AIRLOCK_CACHE:-$HOME/.cache/airlock}
BIN_CACHE=$AIRLOCK_CACHE/bin
# State of a running cluster: PKI, configs, logs, PIDs. Outside the repo so a fresh clone reuses it.
STATE=${AIRLOCK_STATE:-/var/lib/airlock-cluster}
PIDS=$STATE/pids
LOGS=$STATE/logs
PKI=$STATE/pki

# Addresses: loopback and the benchmarking range 198.18.0.0/15 only.
NODE_IF=lo:airlock
NODE_IP=198.19.255.1
NODE_NAME=airlock-node
POD_CIDR=198.18.0.0/16
NODE_POD_CIDR=198.18.0.0/24
SERVICE_CIDR=198.19.0.0/17
KUBERNETES_SVC_IP=198.19.0.1
CLUSTER_DNS_IP=198.19.0.10
REGISTRY=$NODE_IP:5000
# A second registry that requires HTTP Basic auth (htpasswd), for the private-registry e2e tests.
# Its password is generated per cluster state; crane/cosign use it with DOCKER_CONFIG=$PRIVATE_REGISTRY_DOCKER_CONFIG.
PRIVATE_REGISTRY=$NODE_IP:5001
PRIVATE_REGISTRY_USER=airlock-e2e
PRIVATE_REGISTRY_STATE=$STATE/registry-private
PRIVATE_REGISTRY_DOCKER_CONFIG=$PRIVATE_REGISTRY_STATE/docker-config
BRIDGE=airlockbr0

_t0=${_t0:-$(date +%s)}
log() { printf '[%4ss] %s\n' "$(( $(date +%s) - _t0 ))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Run a long step with a heartbeat line every 60 s, so a 20-minute build is never silent.
with_progress() {
  local what=$1; shift
  local start; start=$(date +%s)
  log "$what: started"
  ( while sleep 60; do log "$what: still running ($(( $(date +%s) - start ))s)"; done ) &
  local hb=$!
  local rc=0
  "$@" || rc=$?
  kill "$hb" 2>/dev/null; wait "$hb" 2>/dev/null || true
  if [ "$rc" -ne 0 ]; then log "$what: FAILED after $(( $(date +%s) - start ))s"; return "$rc"; fi
  log "$what: done in $(( $(date +%s) - start ))s"
}

bin_dir() { echo "$BIN_CACHE/$1-$2"; }
