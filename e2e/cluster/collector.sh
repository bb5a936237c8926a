#!/usr/bin/env bash
# Starts (or reuses) the OpenTelemetry backend of the e2e: Jaeger's all-in-one, built from the Go
# module proxy (build.sh jaeger), on the node address. Airlock's operator and router export traces
# to its OTLP/gRPC port ($NODE_IP:4317) when e2e/helm-install.sh finds it running; the tracing e2e
# reads them back from its query API (http://$NODE_IP:16686/api/traces). Memory storage, bounded
# to $JAEGER_MAX_TRACES traces; stopped by down.sh.
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"

JAEGER_MAX_TRACES=${JAEGER_MAX_TRACES:-20000}
QUERY=http://$NODE_IP:16686

if curl -sf "$QUERY/api/services" >/dev/null 2>&1; then
  log "trace collector (Jaeger) at $NODE_IP:4317 already running"
  exit 0
fi
"$CLUSTER_DIR/build.sh" jaeger
mkdir -p "$PIDS" "$LOGS"
# Every listener on the node address (nothing on 0.0.0.0); Zipkin's receiver stays off.
SPAN_STORAGE_TYPE=memory setsid "$(bin_dir jaeger "$JAEGER_VERSION")/all-in-one" \
  --memory.max-traces="$JAEGER_MAX_TRACES" \
  --collector.otlp.grpc.host-port="$NODE_IP:4317" --collector.otlp.http.host-port="$NODE_IP:4318" \
  --collector.grpc-server.host-port="$NODE_IP:14250" --collector.http-server.host-port="$NODE_IP:14268" \
  --query.http-server.host-port="$NODE_IP:16686" --query.grpc-server.host-port="$NODE_IP:16685" \
  --admin.http.host-port="$NODE_IP:14269" \
  >"$LOGS/jaeger.log" 2>&1 </dev/null &
echo $! >"$PIDS/jaeger.pid"
for _ in $(seq 1 60); do
  if curl -sf "$QUERY/api/services" >/dev/null 2>&1; then
    log "trace collector (Jaeger $JAEGER_VERSION) at $NODE_IP:4317, queries at $QUERY"
    exit 0
  fi
  kill -0 "$(cat "$PIDS/jaeger.pid")" 2>/dev/null || { tail -n 20 "$LOGS/jaeger.log" >&2; die "Jaeger exited; its log is $LOGS/jaeger.log"; }
  sleep 1
done
die "Jaeger did not answer at $QUERY within 60 s; its log is $LOGS/jaeger.log"
