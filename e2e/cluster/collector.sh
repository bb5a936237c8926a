#!/usr/bin/env bash
# Starts (or reuses) the e2e's telemetry receivers on the node address, each built from the Go
# module proxy, stopped by down.sh:
# - Jaeger's all-in-one (build.sh jaeger): Airlock's operator and router export traces to its
#   OTLP/gRPC port ($NODE_IP:4317) when e2e/helm-install.sh finds it running; the tracing e2e reads
#   them back from its query API (http://$NODE_IP:16686/api/traces). Memory storage, bounded to
#   $JAEGER_MAX_TRACES traces.
# - the audit sink's receiver (build.sh event_sink, on the CloudEvents Go SDK) at
#   http://$NODE_IP:8099/events, where helm-install.sh points audit.sinkUrl.
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"

JAEGER_MAX_TRACES=${JAEGER_MAX_TRACES:-20000}
QUERY=http://$NODE_IP:16686

SINK=http://$NODE_IP:8099/events
mkdir -p "$PIDS" "$LOGS"
if curl -sf "$SINK" >/dev/null 2>&1; then
  log "audit sink receiver at $SINK already running"
else
  "$CLUSTER_DIR/build.sh" event_sink
  setsid "$(bin_dir event-sink "$CLOUDEVENTS_SDK_VERSION")/event-sink" --listen="$NODE_IP:8099" \
    >"$LOGS/event-sink.log" 2>&1 </dev/null &
  echo $! >"$PIDS/event-sink.pid"
  for _ in $(seq 1 30); do curl -sf "$SINK" >/dev/null 2>&1 && break; sleep 1; done
  curl -sf "$SINK" >/dev/null 2>&1 || die "the audit sink receiver did not answer at $SINK; its log is $LOGS/event-sink.log"
  log "audit sink receiver (CloudEvents Go SDK $CLOUDEVENTS_SDK_VERSION) at $SINK"
fi

if curl -sf "$QUERY/api/services" >/dev/null 2>&1; then
  log "trace collector (Jaeger) at $NODE_IP:4317 already running"
  exit 0
fi
"$CLUSTER_DIR/build.sh" jaeger
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
