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

# Alive: the process exists and is not a zombie (a zombie's /proc entry stays until it is
# reaped); with a second argument, it must also have started at that time (clock ticks since
# boot, /proc/PID/stat field 22): a PID reused by another process is not "alive".
alive() {
  local stat fields
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  read -ra fields <<<"$stat"
  [ "${fields[0]}" != Z ] && { [ -z "${2:-}" ] || [ "${fields[19]}" = "$2" ]; }
}

# When process $1 started (see alive).
started_at() {
  local stat fields
  stat=$(cat "/proc/$1/stat") || return 1
  stat=${stat##*) }
  read -ra fields <<<"$stat"
  echo "${fields[19]}"
}

# Sends signal $2 to daemon $1's recorded process, only if it is still that process.
signal() {
  local pid=${pid_of[$1]}
  if alive "$pid" "${start_of[$1]}"; then kill "-$2" "$pid" 2>/dev/null || true; fi
}

declare -A cmdline environ workdir pid_of start_of
# Every daemon is checked before any is stopped: a wrong name part-way must not leave the
# daemons before it down.
for d in "$@"; do
  f=$PIDS/$d.pid
  [ -f "$f" ] || die "no daemon '$d' recorded in $PIDS (is the cluster up? make cluster-up)"
  pid=$(cat "$f")
  if ! [[ $pid =~ ^[0-9]+$ ]] || ! alive "$pid"; then
    die "daemon '$d' (pid $pid) is not running: make cluster-up"
  fi
  # A PID file can outlive its process and the PID be reused: only a process whose command
  # line names this cluster's state directory is signalled.
  args=$(tr '\0' ' ' <"/proc/$pid/cmdline")
  [[ $args == *"$STATE/"* ]] || die "pid $pid recorded for '$d' is not a daemon of this cluster ($args): make cluster-up"
  # NUL-separated, as the kernel keeps them; read before the process goes.
  cmdline[$d]=$(base64 -w0 <"/proc/$pid/cmdline")
  environ[$d]=$(base64 -w0 <"/proc/$pid/environ")
  workdir[$d]=$(readlink "/proc/$pid/cwd")
  pid_of[$d]=$pid
  start_of[$d]=$(started_at "$pid")
done

# Starts daemon $1 again as it ran; fails if it exits at once.
start_again() {
  local d=$1 args envs
  mapfile -d '' args < <(base64 -d <<<"${cmdline[$d]}")
  mapfile -d '' envs < <(base64 -d <<<"${environ[$d]}")
  echo "--- restarted by restart.sh at $(date -u +%FT%TZ) ---" >>"$LOGS/$d.log"
  (cd "${workdir[$d]}" && exec setsid env -i "${envs[@]}" "${args[@]}" >>"$LOGS/$d.log" 2>&1 </dev/null) &
  echo $! >"$PIDS/$d.pid"
  sleep 1
  alive "$(cat "$PIDS/$d.pid")" || { tail -n 20 "$LOGS/$d.log" >&2; log "ERROR: $d exited at once after its restart; its log is $LOGS/$d.log"; return 1; }
  log "started $d again (pid $(cat "$PIDS/$d.pid"))"
}

# Daemons stopped and not yet started again, last stopped first. Whatever ends this script —
# an error, Ctrl-C, a TERM from the test that ran it — starts them again: a chaos run must
# never leave the cluster without its API server or registry.
# A daemon joins the list before it is signalled, so one interrupted while it stops is started
# again too (after it is killed, if it still runs), and leaves it only once it runs again.
stopped=() sleeper=''
restore() {
  local d
  [ -z "$sleeper" ] || kill "$sleeper" 2>/dev/null || true
  for d in "${stopped[@]}"; do
    log "starting $d again (restart.sh is ending early)"
    signal "$d" KILL
    for _ in $(seq 1 100); do alive "${pid_of[$d]}" "${start_of[$d]}" || break; sleep 0.1; done
    start_again "$d" || true
  done
  stopped=()
}
trap restore EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for d in "$@"; do
  pid=${pid_of[$d]} start=${start_of[$d]}
  stopped=("$d" "${stopped[@]}")
  if $kill_now; then
    signal "$d" KILL
  else
    signal "$d" TERM
    for _ in $(seq 1 20); do alive "$pid" "$start" || break; sleep 0.5; done
    signal "$d" KILL
  fi
  for _ in $(seq 1 300); do alive "$pid" "$start" || break; sleep 0.1; done
  if alive "$pid" "$start"; then die "$d (pid $pid) still runs 30 s after SIGKILL"; fi
  log "stopped $d (pid $pid$($kill_now && echo ", killed"))"
done

# In the background: bash runs a trap only once its foreground command is done.
if [ "$down" -gt 0 ]; then
  log "down for ${down}s"
  sleep "$down" &
  sleeper=$!
  wait "$sleeper"
  sleeper=''
fi

while [ ${#stopped[@]} -gt 0 ]; do
  d=${stopped[0]}
  start_again "$d" || die "$d did not start again"
  stopped=("${stopped[@]:1}")
done
