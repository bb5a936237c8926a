#!/usr/bin/env bash
# PKI of the local cluster (openssl 3). Usage: pki.sh <dir> <node-name> <node-ip> <kubernetes-service-ip>
# Every client certificate maps to the identity the upstream RBAC defaults expect
# (system:kube-controller-manager, system:node:<node>, ...), so no extra bindings are needed for them.
set -euo pipefail
D=$1; NODE=$2; NODE_IP=$3; SVC_IP=$4
mkdir -p "$D"; cd "$D"
umask 077
[ -f ca.key ] || openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
  -subj "/CN=airlock-local-ca" -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
# mk <name> <subject> <extKeyUsage> [subjectAltName]
mk() {
  [ -f "$1.crt" ] && return 0
  local ext=(-addext "basicConstraints=critical,CA:FALSE" -addext "keyUsage=critical,digitalSignature,keyEncipherment" -addext "extendedKeyUsage=$3")
  [ -n "${4:-}" ] && ext+=(-addext "subjectAltName=$4")
  openssl req -new -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" "${ext[@]}" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$1.crt" -days 365 -copy_extensions copyall 2>/dev/null
  rm -f "$1.csr"
}
mk apiserver "/CN=kube-apiserver" serverAuth \
  "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:${NODE_IP},IP:${SVC_IP}"
mk apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
mk admin "/O=system:masters/CN=kubernetes-admin" clientAuth
mk controller-manager "/CN=system:kube-controller-manager" clientAuth
mk scheduler "/CN=system:kube-scheduler" clientAuth
mk kube-proxy "/CN=system:kube-proxy" clientAuth
mk kubelet "/O=system:nodes/CN=system:node:${NODE}" clientAuth
mk kubelet-serving "/CN=${NODE}" serverAuth "DNS:${NODE},IP:${NODE_IP},IP:127.0.0.1"
mk kube-router "/CN=kube-router" clientAuth
[ -f sa.key ] || { openssl genrsa -out sa.key 2048 2>/dev/null; openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null; }
kcfg() { # <name>
  cat > "$1.kubeconfig" <<K
apiVersion: v1
kind: Config
clusters:
- name: airlock-local
  cluster: {server: "https://${NODE_IP}:6443", certificate-authority: "$PWD/ca.crt"}
users:
- name: $1
  user: {client-certificate: "$PWD/$1.crt", client-key: "$PWD/$1.key"}
contexts:
- name: $1@airlock-local
  context: {cluster: airlock-local, user: $1}
current-context: $1@airlock-local
K
}
for u in admin controller-manager scheduler kube-proxy kubelet kube-router; do kcfg "$u"; done
