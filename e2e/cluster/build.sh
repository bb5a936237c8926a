#!/usr/bin/env bash
# Builds the pinned upstream binaries of the local cluster from the Go module proxy, cached under
# ~/.cache/airlock/bin/<component>-<version>/. A component whose cache entry is complete is skipped,
# so a second run costs nothing. Usage: build.sh [component...]  (default: all)
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"


export GOMODCACHE=${GOMODCACHE_AIRLOCK:-$AIRLOCK_CACHE/gomod}
export GOCACHE=${GOCACHE_AIRLOCK:-$AIRLOCK_CACHE/gobuild}
export GOFLAGS=-buildvcs=false
export GOTOOLCHAIN=local
# Two cores: more parallel compiles only thrash memory and the linker.
export GOMAXPROCS=2

done_marker() { echo "$(bin_dir "$1" "$2")/.complete"; }
is_built() { [ -f "$(done_marker "$1" "$2")" ]; }
mark_built() { touch "$(done_marker "$1" "$2")"; BUILT_SOMETHING=1; }
BUILT_SOMETHING=

k8s_ldflags() {
  local v=$K8S_VERSION min ld="-s -w"
  min=$(echo "$v" | cut -d. -f2)
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$min -X $p.gitTreeState=clean -X $p.gitCommit=unknown -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$ld"
}

# k8s.io/kubernetes pins its staging modules at v0.0.0 with replace => ./staging/...; a wrapper module
# replaces each with its published v0.<minor>.<patch> (read from the real go.mod, not hard-coded).
build_kubernetes() {
  local out; out=$(bin_dir kubernetes "$K8S_VERSION")
  is_built kubernetes "$K8S_VERSION" && { log "kubernetes $K8S_VERSION: cached"; return; }
  local stg="v0.${K8S_VERSION#v1.}" mod=$AIRLOCK_CACHE/src/k8s-$K8S_VERSION
  mkdir -p "$mod" "$out"
  (
    cd "$mod" || exit
    [ -f go.mod ] || go mod init local/k8s-build >/dev/null 2>&1
    go mod edit -go=1.24.0 -godebug=default=go1.24
    local gomod
    gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    [ -f "$gomod" ] || die "could not download k8s.io/kubernetes@$K8S_VERSION go.mod"
    while read -r m; do
      go mod edit -replace="$m=$m@$stg"
    done < <(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' "$gomod")
    go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
    local cmds="kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl kubelet"
    # shellcheck disable=SC2046
    with_progress "kubernetes: resolve modules" go get $(for c in $cmds; do echo "k8s.io/kubernetes/cmd/$c@$K8S_VERSION"; done)
    local ld; ld=$(k8s_ldflags)
    with_progress "kubernetes: build static control plane + kubectl" \
      env CGO_ENABLED=0 go build -p 2 -trimpath -tags=selinux,notest -ldflags "all=$ld" -o "$out/" \
        k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl
    # The kubelet is built with cgo, as upstream does.
    with_progress "kubernetes: build kubelet" \
      go build -p 2 -trimpath -tags=selinux,notest -ldflags "all=$ld" -o "$out/" k8s.io/kubernetes/cmd/kubelet
  )
  mark_built kubernetes "$K8S_VERSION"
}

# etcd's server module uses relative replaces too; as a dependency of a wrapper they are ignored and
# the published sibling modules of the same version are used.
build_etcd() {
  local out; out=$(bin_dir etcd "$ETCD_VERSION")
  is_built etcd "$ETCD_VERSION" && { log "etcd $ETCD_VERSION: cached"; return; }
  local mod=$AIRLOCK_CACHE/src/etcd-$ETCD_VERSION
  mkdir -p "$mod" "$out"
  (
    cd "$mod" || exit
    [ -f go.mod ] || go mod init local/etcd-build >/dev/null 2>&1
    with_progress "etcd: resolve modules" go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    with_progress "etcd: build" env CGO_ENABLED=0 go build -p 2 -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3
  )
  mark_built etcd "$ETCD_VERSION"
}

# go_install <name> <version> <module> <package> [env...]: builds a tool's main package at a pinned
# module version. Not `go install pkg@version`: that also reads the module's version list to look for
# deprecations, and the module proxy here refuses the list for some modules (403) while serving the
# version itself. A wrapper module that requires the exact version needs only the version.
go_install() {
  local name=$1 version=$2 pkg=$4; shift 4 # $3, the module, is there for the reader of the call
  local out; out=$(bin_dir "$name" "$version")
  is_built "$name" "$version" && { log "$name $version: cached"; return; }
  local mod=$AIRLOCK_CACHE/src/$name-$version
  mkdir -p "$mod" "$out"
  (
    cd "$mod" || exit
    [ -f go.mod ] || go mod init "local/$name-build" >/dev/null 2>&1
    local r
    for r in ${GO_REPLACES:-}; do go mod edit -replace="$r"; done
    with_progress "$name $version: resolve modules" env "$@" go get "$pkg@$version"
    with_progress "$name $version: build" env "$@" go build -p 2 -trimpath -ldflags "-s -w" -o "$out/" "$pkg"
  )
  mark_built "$name" "$version"
}

build_kube_router() {
  GO_REPLACES=$KUBE_ROUTER_GO_REPLACES go_install kube-router "$KUBE_ROUTER_VERSION" \
    github.com/cloudnativelabs/kube-router/v2 github.com/cloudnativelabs/kube-router/v2/cmd/kube-router CGO_ENABLED=0
}
build_helm() { go_install helm "$HELM_VERSION" helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm CGO_ENABLED=0; }
build_crane() {
  go_install crane "$CRANE_VERSION" github.com/google/go-containerregistry \
    github.com/google/go-containerregistry/cmd/crane CGO_ENABLED=0
}
build_cosign() {
  go_install cosign "$COSIGN_VERSION" github.com/sigstore/cosign/v2 github.com/sigstore/cosign/v2/cmd/cosign CGO_ENABLED=0
}
# cri-tools is missing from the checksum database's mirror here; the module proxy still serves it.
build_crictl() {
  GO_REPLACES=$CRICTL_GO_REPLACES go_install crictl "$CRICTL_VERSION" sigs.k8s.io/cri-tools sigs.k8s.io/cri-tools/cmd/crictl \
    CGO_ENABLED=0 GONOSUMDB=sigs.k8s.io/cri-tools
}

build_grpcurl() {
  go_install grpcurl "$GRPCURL_VERSION" github.com/fullstorydev/grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl CGO_ENABLED=0
}

# kstatus, as the cli-utils library computes it (what Flux's health checks, kpt and Config Sync use):
# a small helper of ours (e2e/kstatus/main.go) around that library. Its cache entry remembers the
# helper's hash, so an edit of it rebuilds it.
build_kstatus() {
  local src=$CLUSTER_DIR/../kstatus/main.go out sum
  out=$(bin_dir kstatus "$CLI_UTILS_VERSION")
  sum=$(sha256sum "$src" | cut -d' ' -f1)
  if [ "$(cat "$(done_marker kstatus "$CLI_UTILS_VERSION")" 2>/dev/null)" = "$sum" ]; then
    log "kstatus $CLI_UTILS_VERSION: cached"
    return
  fi
  local mod=$AIRLOCK_CACHE/src/kstatus-$CLI_UTILS_VERSION
  mkdir -p "$mod" "$out"
  cp "$src" "$mod/main.go"
  (
    cd "$mod" || exit
    [ -f go.mod ] || go mod init local/kstatus >/dev/null 2>&1
    with_progress "kstatus $CLI_UTILS_VERSION: resolve modules" go get "sigs.k8s.io/cli-utils@$CLI_UTILS_VERSION"
    go mod tidy >/dev/null 2>&1
    with_progress "kstatus $CLI_UTILS_VERSION: build" env CGO_ENABLED=0 go build -p 2 -trimpath -ldflags "-s -w" -o "$out/kstatus" .
  )
  echo "$sum" > "$(done_marker kstatus "$CLI_UTILS_VERSION")"
  BUILT_SOMETHING=1
}

# Flux's controllers, to drive Airlock from an OCI artifact as a GitOps user does. Each is built as
# its own main module (a writable copy of the published module source) so that its go.mod replaces
# apply; the nested ./api module is not part of the module zip, so it is replaced by the api module
# published under the same tag. The CRDs come from the same source, next to the binary.
build_flux_controller() {
  local name=$1 version=$2 module=github.com/fluxcd/$1
  local out; out=$(bin_dir "$name" "$version")
  is_built "$name" "$version" && { log "$name $version: cached"; return; }
  local src=$AIRLOCK_CACHE/src/$name-$version dir
  dir=$(go mod download -json "$module@$version" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [ -d "$dir" ] || die "could not download $module@$version"
  rm -rf "$src" && mkdir -p "$(dirname "$src")" "$out/crds" && cp -r "$dir" "$src" && chmod -R u+w "$src"
  (
    cd "$src" || exit
    go mod edit -replace="$module/api=$module/api@$version"
    local r
    for r in ${GO_REPLACES:-}; do go mod edit -replace="$r"; done
    # -mod=mod records only what the build needs; `go mod tidy` would also fetch test-only modules,
    # some of which the proxy here refuses.
    with_progress "$name $version: build" env CGO_ENABLED=0 go build -mod=mod -p 2 -trimpath -ldflags "-s -w" -o "$out/$name" .
  )
  cp "$src"/config/crd/bases/*.yaml "$out/crds/"
  mark_built "$name" "$version"
}
build_flux() {
  GO_REPLACES=$FLUX_SOURCE_CONTROLLER_GO_REPLACES build_flux_controller source-controller "$FLUX_SOURCE_CONTROLLER_VERSION"
  build_flux_controller kustomize-controller "$FLUX_KUSTOMIZE_CONTROLLER_VERSION"
}

# KWOK: fake nodes whose pods "run" without containers, for the 10,000-Plugin bench
# (`make bench-kwok`); run on the host against the local cluster by `airlock_e2e::kwok`.
# kwok has no built-in behaviour: its "stages" (how a fake node becomes Ready and keeps its lease, how
# a pod gets an IP, runs, becomes Ready and is deleted) come from the same module, as one config
# file next to the binary.
build_kwok() {
  go_install kwok "$KWOK_VERSION" sigs.k8s.io/kwok sigs.k8s.io/kwok/cmd/kwok CGO_ENABLED=0
  local out dir stage; out=$(bin_dir kwok "$KWOK_VERSION")
  [ -f "$out/stages.yaml" ] && return
  dir=$(cd "$AIRLOCK_CACHE/src/kwok-$KWOK_VERSION" && go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [ -d "$dir" ] || die "could not download sigs.k8s.io/kwok@$KWOK_VERSION"
  for stage in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
    pod/general/pod-create pod/general/pod-init-container-running pod/general/pod-init-container-completed \
    pod/general/pod-ready pod/general/pod-complete pod/general/pod-delete; do
    printf -- '---\n'
    cat "$dir/kustomize/stage/$stage.yaml"
  done >"$out/stages.yaml.tmp"
  mv "$out/stages.yaml.tmp" "$out/stages.yaml"
}

# Jaeger's all-in-one: an OpenTelemetry backend that accepts OTLP (gRPC on 4317) and answers trace
# queries over HTTP (16686); the e2e checks that one invocation arrives as one trace with the
# router's, the shim's and the plugin's spans. Memory storage only, run on the host by
# collector.sh, which builds it (not part of ALL: `make demo` does not need it).
build_jaeger() {
  go_install jaeger "$JAEGER_VERSION" github.com/jaegertracing/jaeger github.com/jaegertracing/jaeger/cmd/all-in-one CGO_ENABLED=0
}

# The receiver of Airlock's audit sink in the e2e (e2e/event-sink/main.go): the CloudEvents Go SDK
# decides what a valid event is. Rebuilt when the helper changes (its hash is the cache mark).
build_event_sink() {
  local src=$CLUSTER_DIR/../event-sink/main.go out sum
  out=$(bin_dir event-sink "$CLOUDEVENTS_SDK_VERSION")
  sum=$(sha256sum "$src" | cut -d' ' -f1)
  if [ "$(cat "$(done_marker event-sink "$CLOUDEVENTS_SDK_VERSION")" 2>/dev/null)" = "$sum" ]; then
    log "event-sink $CLOUDEVENTS_SDK_VERSION: cached"
    return
  fi
  local mod=$AIRLOCK_CACHE/src/event-sink-$CLOUDEVENTS_SDK_VERSION
  mkdir -p "$mod" "$out"
  cp "$src" "$mod/main.go"
  (
    cd "$mod" || exit
    [ -f go.mod ] || go mod init local/event-sink >/dev/null 2>&1
    with_progress "event-sink: resolve modules" go get "github.com/cloudevents/sdk-go/v2@$CLOUDEVENTS_SDK_VERSION"
    go mod tidy >/dev/null 2>&1
    with_progress "event-sink: build" env CGO_ENABLED=0 go build -p 2 -trimpath -ldflags "-s -w" -o "$out/event-sink" .
  )
  echo "$sum" > "$(done_marker event-sink "$CLOUDEVENTS_SDK_VERSION")"
  BUILT_SOMETHING=1
}

ALL=(kubernetes etcd kube_router crane helm cosign crictl grpcurl kstatus flux kwok)
[ $# -gt 0 ] || set -- "${ALL[@]}"
for c in "$@"; do
  "build_${c//-/_}"
done
log "binaries ready under $BIN_CACHE"

# The Go build and module caches are only for building again: what runs is the binary cached under
# $BIN_CACHE. A cold build of everything leaves ~18 GiB in them (12 GiB of compiled packages for
# Kubernetes alone), which on a machine with little free disk is what the Rust builds after it then
# miss (a CI run failed with "No space left on device"). So a run that built something removes them;
# a version bump re-downloads what it needs. AIRLOCK_KEEP_GO_CACHES=1 keeps them.
if [ -n "$BUILT_SOMETHING" ] && [ -z "${AIRLOCK_KEEP_GO_CACHES:-}" ]; then
  before=$(du -sm "$GOCACHE" "$GOMODCACHE" 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')
  go clean -cache >/dev/null 2>&1 || true
  go clean -modcache >/dev/null 2>&1 || true
  log "removed the Go build and module caches (${before} MiB; AIRLOCK_KEEP_GO_CACHES=1 keeps them)"
fi
