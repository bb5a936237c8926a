#!/usr/bin/env bash
# Packages charts/airlock as users receive it: the images `make e2e-images` pushed pinned by
# digest in the packaged values.yaml (no image value to pass at install), pushed as an OCI
# artifact to the local registry. Prints the chart reference and version for `helm install`:
#   oci://<registry>/charts/airlock <version>
# helm-install.sh installs from there, so the e2e suite runs the chart from oci://, not from the
# source directory.
# shellcheck source=SCRIPTDIR/cluster/lib.sh
. "$(dirname "$0")/cluster/lib.sh"
ROOT=$(cd "$CLUSTER_DIR/../.." && pwd)
# shellcheck source=/dev/null
. "$ROOT/target/e2e/images.env"
registry=${AIRLOCK_E2E_REGISTRY:-$REGISTRY}

for ref in "$AIRLOCK_OPERATOR_IMAGE" "$AIRLOCK_SHIM_IMAGE"; do
  [[ $ref == *@sha256:* ]] || die "$ref is not pinned by digest (rerun make e2e-images)"
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$ROOT/charts/airlock" "$work/airlock"

# Pin both images in the packaged values.yaml: within the `image:` block of the top-level
# `operator:` and `shim:` keys, repository and digest. Checked below by rendering the package.
pin() { # pin KEY REFERENCE < values.yaml > values.yaml
  awk -v key="$1" -v repo="${2%@*}" -v digest="${2#*@}" '
    /^[a-zA-Z]/ { top = $0 ~ "^" key ":" }
    top && /^  image:/ { in_image = 1; print; next }
    top && in_image && /^  [a-zA-Z]/ { in_image = 0 }
    top && in_image && /^    repository:/ { print "    repository: " repo; next }
    top && in_image && /^    digest:/ { print "    digest: \"" digest "\""; next }
    { print }'
}
values=$work/airlock/values.yaml
pin operator "$AIRLOCK_OPERATOR_IMAGE" <"$values" >"$values.1"
pin shim "$AIRLOCK_SHIM_IMAGE" <"$values.1" >"$values"
rm "$values.1"

# The image digests in the version: each build of the images is its own chart version.
version="0.1.0-e2e.$(printf '%s' "$AIRLOCK_OPERATOR_IMAGE$AIRLOCK_SHIM_IMAGE" | sha256sum | cut -c1-12)"
helm package "$work/airlock" --version "$version" --destination "$work" >/dev/null
package=$work/airlock-$version.tgz

# What users would get: the packaged chart renders exactly the images that were pinned.
rendered=$(helm template airlock "$package" --namespace airlock-system --kube-version 1.34.0)
grep -qF "image: \"$AIRLOCK_OPERATOR_IMAGE\"" <<<"$rendered" ||
  die "the packaged chart does not render the operator image $AIRLOCK_OPERATOR_IMAGE"
grep -qF -- "--shim-image=$AIRLOCK_SHIM_IMAGE" <<<"$rendered" ||
  die "the packaged chart does not pass the shim image $AIRLOCK_SHIM_IMAGE"

helm push "$package" "oci://$registry/charts" --plain-http >/dev/null 2>"$work/push.log" ||
  die "helm push to oci://$registry/charts failed: $(cat "$work/push.log")"
echo "oci://$registry/charts/airlock $version"
