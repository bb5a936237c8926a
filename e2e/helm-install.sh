#!/usr/bin/env bash
# Installs (or upgrades) Airlock from charts/airlock with the images `make e2e-images` pushed.
# The node address may serve bundles over plain HTTP (the e2e's file servers listen there).
# Extra arguments go to helm (e.g. --set progressDeadlineSeconds=20).
# shellcheck source=SCRIPTDIR/cluster/lib.sh
. "$(dirname "$0")/cluster/lib.sh"
ROOT=$(cd "$CLUSTER_DIR/../.." && pwd)
export KUBECONFIG=${KUBECONFIG:-$STATE/kubeconfig}
# shellcheck source=/dev/null
. "$ROOT/target/e2e/images.env"
# The chart takes images as repository + digest (operator.image.repository/digest); images.env
# holds full references pinned by digest (registry/path@sha256:...): split them here.
for ref in "$AIRLOCK_OPERATOR_IMAGE" "$AIRLOCK_SHIM_IMAGE"; do
  [[ $ref == *@sha256:* ]] || die "$ref is not pinned by digest (rerun make e2e-images)"
done
# Helm installs the CRDs on the first install; on an upgrade the operator brings them up to its
# own schema (crds.upgrade), as for any user: no separate step here.
helm upgrade --install airlock "$ROOT/charts/airlock" --namespace airlock-system --create-namespace \
  --set operator.image.repository="${AIRLOCK_OPERATOR_IMAGE%@*}" \
  --set operator.image.digest="${AIRLOCK_OPERATOR_IMAGE#*@}" \
  --set shim.image.repository="${AIRLOCK_SHIM_IMAGE%@*}" \
  --set shim.image.digest="${AIRLOCK_SHIM_IMAGE#*@}" \
  --set "insecureRegistries={${AIRLOCK_E2E_REGISTRY:-$REGISTRY}}" \
  --set "bundleHttp.insecureHosts={$NODE_IP}" --set "bundleHttp.allowedCidrs={$NODE_IP/32}" \
  --set "clusterCidrs={$POD_CIDR,$SERVICE_CIDR}" \
  --wait --timeout 3m "$@" >/dev/null
