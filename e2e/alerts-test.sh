#!/usr/bin/env bash
# Checks and unit-tests Airlock's alerts (charts/airlock/files/alerts.yaml) with promtool (Debian's
# prometheus package, installed by `make tools`): `promtool check rules`, then `promtool test
# rules` on files/alerts_test.yaml's synthetic series. Then the same tests on the rules as the
# chart ships them (the PrometheusRule's spec, rendered with helm for airlock-system), so the
# template cannot drift from the tested file. No cluster, no Prometheus server.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
FILES=$ROOT/charts/airlock/files
KUBE_VERSION=${KUBE_VERSION:-1.34.0}

for tool in promtool helm; do
  command -v "$tool" >/dev/null || { echo "alerts-test: $tool not on PATH (make tools)" >&2; exit 1; }
done

promtool check rules "$FILES/alerts.yaml"
(cd "$FILES" && promtool test rules alerts_test.yaml)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The spec of the rendered PrometheusRule, a rule file once unindented.
helm template airlock "$ROOT/charts/airlock" --namespace airlock-system --kube-version "$KUBE_VERSION" \
  --set metrics.prometheusRule.enabled=true --show-only templates/monitoring.yaml |
  awk '/^---/ { rule = 0; spec = 0 }
       /^kind: PrometheusRule/ { rule = 1 }
       rule && spec { print substr($0, 3) }
       rule && /^spec:/ { spec = 1 }' >"$tmp/alerts.yaml"
[[ -s $tmp/alerts.yaml ]] || { echo "alerts-test: the chart rendered no PrometheusRule" >&2; exit 1; }
cp "$FILES/alerts_test.yaml" "$tmp/"
promtool check rules "$tmp/alerts.yaml"
(cd "$tmp" && promtool test rules alerts_test.yaml)
echo "alerts-test: ok"
