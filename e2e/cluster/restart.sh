#!/usr/bin/env bash
# restart.sh [--kill] [--down SECONDS] <daemon>...: stops daemons of the local cluster (by the PID
# up.sh recorded) and starts each again as it ran — same command line, environment and working
# directory, its log appended to — after SECONDS down (default 0). For `make chaos`: an API server,
# etcd, registry, kubelet or containerd that goes away and comes back as it does on a real node.
#
# Only the daemon's own process is signalled, not its process group: containerd's shims (and so
# every container) outlive a containerd restart, as they do under systemd's KillMode=process.
# --kill: SIGKILL at once (a crash); otherwise SIGTERM, then SIGKILL after 10 s (a restart).
# Daemons are stopped in the order given and started again in reverse (etcd before the API server
# when given `kube-apiserver etcd`).
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"
[ "$(id -u)" -eq 0 ] || die "restart needs root (the cluster's daemons run as root)"

kill_now=false down=0
while [ $# -gt 0 ]; do
  case $1 in
    --kill) kill_now=true; shift ;;
    --down) down=${2:?--down needs a number of seconds}; shift 2 ;;
    --*) die "unknown option $1 (usage: restart.sh [--kill] [--down SECONDS] <daemon>...)" ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || die "usage: restart.sh [--kill] [--down SECONDS] <daemon>... (names as in $PIDS)"
[[ $down =~ ^[0-9]+$ ]] || die "--down takes whole seconds, not '$down'"

declare -A cmdline environ workdir
stopped=()
for d in "$@"; do
  f=$PIDS/$d.pid
  [ -f "$f" ] || die "no daemon '$d' recorded in $PIDS (is the cluster up? make cluster-up)"
  pid=$(cat "$f")
  kill -0 "$pid" 2>/dev/null || die "daemon '$d' (pid $pid) is not running: make cluster-up"
  # NUL-separated, as the kernel keeps them; read before the process goes.
  cmdline[$d]=$(base64 -w0 <"/proc/$pid/cmdline")
  environ[$d]=$(base64 -w0 <"/proc/$pid/environ")
  workdir[$d]=$(readlink "/proc/$pid/cwd")
  if $kill_now; then
    kill -KILL "$pid"
  else
    kill -TERM "$pid"
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  log "stopped $d (pid $pid$($kill_now && echo ", killed"))"
  stopped=("$d" "${stopped[@]}")
done

[ "$down" -eq 0 ] || { log "down for ${down}s"; sleep "$down"; }

for d in "${stopped[@]}"; do
  mapfile -d '' args < <(base64 -d <<<"${cmdline[$d]}")
  mapfile -d '' envs < <(base64 -d <<<"${environ[$d]}")
  echo "--- restarted by restart.sh at $(date -u +%FT%TZ) ---" >>"$LOGS/$d.log"
  (cd "${workdir[$d]}" && exec setsid env -i "${envs[@]}" "${args[@]}" >>"$LOGS/$d.log" 2>&1 </dev/null) &
  echo $! >"$PIDS/$d.pid"
  sleep 1
  kill -0 "$(cat "$PIDS/$d.pid")" 2>/dev/null || { tail -n 20 "$LOGS/$d.log" >&2; die "$d exited at once after its restart; its log is $LOGS/$d.log"; }
  log "started $d again (pid $(cat "$PIDS/$d.pid"))"
done
