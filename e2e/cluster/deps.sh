#!/usr/bin/env bash
# Installs the Debian packages the local cluster needs (idempotent; apt is skipped when all are present).
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"
PKGS="containerd runc containernetworking-plugins iptables ipset conntrack socat ebtables iproute2 \
  docker-registry musl-tools openssl curl ca-certificates jq python3-venv shellcheck lua5.1 \
  prometheus apache2-utils g++"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  log "installing Debian packages:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
# The Debian packages start nothing here (no systemd), but make sure no packaged registry/containerd
# from an earlier manual start holds our ports.
log "Debian packages present"
