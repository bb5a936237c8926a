#!/usr/bin/env bash
# Installs (or upgrades) Airlock from charts/airlock, packaged with the images `make e2e-images`
# pushed and installed from the local registry (oci://).
# The node address may serve bundles over plain HTTP (the e2e's file servers listen there);
# $NODE_IP:5002 is the faulty registry of e2e/tests/registry_faults.rs (a proxy, only while it runs).
# Extra arguments go to helm (e.g. --set progressDeadlineSeconds=20).
# AIRLOCK_RELEASE / AIRLOCK_RELEASE_NAMESPACE install another release (default airlock in
# airlock-system), e.g. the second release of e2e/tests/shards.rs.
# shellcheck source=SCRIPTDIR/cluster/lib.sh
. "$(dirname "$0")/cluster/lib.sh"
ROOT=$(cd "$CLUSTER_DIR/../.." && pwd)
export KUBECONFIG=${KUBECONFIG:-$STATE/kubeconfig}
# shellcheck source=/dev/null
. "$ROOT/target/e2e/images.env"
# The chart as users get it: packaged with the images pinned by digest, pushed to the local
# registry, installed from oci:// (e2e/chart-package.sh). No image value is passed here.
read -r chart version < <("$ROOT/e2e/chart-package.sh") || die "packaging the chart failed"
[[ -n ${version:-} ]] || die "e2e/chart-package.sh printed no chart version"
# Helm installs the CRDs on the first install; on an upgrade the operator brings them up to its
# own schema (crds.upgrade), as for any user: no separate step here.
# Traces and audit events go to the e2e's receivers (e2e/cluster/collector.sh) when they run.
telemetry=()
if curl -sf "http://$NODE_IP:16686/api/services" >/dev/null 2>&1; then
  telemetry+=(--set "tracing.otlpEndpoint=http://$NODE_IP:4317")
fi
if curl -sf "http://$NODE_IP:8099/events" >/dev/null 2>&1; then
  telemetry+=(--set "audit.sinkUrl=http://$NODE_IP:8099/events")
fi
helm upgrade --install "${AIRLOCK_RELEASE:-airlock}" "$chart" --version "$version" --plain-http \
  --namespace "${AIRLOCK_RELEASE_NAMESPACE:-airlock-system}" --create-namespace \
  --set "insecureRegistries={${AIRLOCK_E2E_REGISTRY:-$REGISTRY},$PRIVATE_REGISTRY,$NODE_IP:5002}" \
  --set "bundleHttp.insecureHosts={$NODE_IP}" --set "bundleHttp.allowedCidrs={$NODE_IP/32}" \
  --set "clusterCidrs={$POD_CIDR,$SERVICE_CIDR}" \
  "${telemetry[@]}" --wait --timeout 3m "$@" >/dev/null
