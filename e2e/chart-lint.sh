#!/usr/bin/env bash
# Lints charts/airlock (helm lint --strict) and renders it (helm template) with its default values
# and with every values file in charts/airlock/ci/, as release `airlock` in airlock-system and as
# a second release elsewhere. Needs only helm on PATH (the Makefile puts it there); no cluster.
# The server-side dry run against the cluster is e2e/tests/chart.rs.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CHART=$ROOT/charts/airlock
# helm template assumes an old Kubernetes unless told; the chart requires >= 1.33.
KUBE_VERSION=${KUBE_VERSION:-1.34.0}

failed=0
check() {
  local what=$1; shift
  if ! out=$("$@" 2>&1); then
    printf 'chart-lint: FAILED %s\n%s\n' "$what" "$out" >&2
    failed=1
  fi
}

for values in "" "$CHART"/ci/*.yaml; do
  name=${values:+${values#"$ROOT"/}}
  args=()
  [[ -n $values ]] && args=(--values "$values")
  check "helm lint ${name:-defaults}" helm lint --strict "$CHART" "${args[@]}"
  check "helm template ${name:-defaults} (airlock)" \
    helm template airlock "$CHART" --namespace airlock-system --kube-version "$KUBE_VERSION" "${args[@]}"
  check "helm template ${name:-defaults} (airlock2)" \
    helm template airlock2 "$CHART" --namespace airlock2-system --kube-version "$KUBE_VERSION" "${args[@]}"
  [[ $failed == 0 ]] && echo "chart-lint: ok ${name:-defaults}"
done

# Two releases' dashboards must not overwrite each other in one Grafana (uid and title).
dashboard() {
  helm template "$1" "$CHART" --namespace "$2" --kube-version "$KUBE_VERSION" \
    --set metrics.dashboard.enabled=true --show-only templates/dashboard.yaml |
    grep -E '^ *"(uid|title)": "Airlock|^ *"uid": "airlock-' | sort
}
first=$(dashboard airlock airlock-system)
second=$(dashboard airlock2 airlock2-system)
if [[ $(wc -l <<<"$first") != 2 ]] || [[ -n $(comm -12 <(echo "$first") <(echo "$second")) ]]; then
  printf 'chart-lint: FAILED two releases render the same dashboard uid or title:\n%s\n%s\n' \
    "$first" "$second" >&2
  failed=1
else
  echo "chart-lint: ok one dashboard uid and title per release"
fi
exit "$failed"
