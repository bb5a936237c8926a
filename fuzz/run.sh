#!/usr/bin/env bash
# Builds every fuzz target (cargo-fuzz/libFuzzer on the pinned stable toolchain with
# RUSTC_BOOTSTRAP=1) and runs each for FUZZ_SECONDS (default 60) on its seed corpus; prints the
# executions per target and exits non-zero if any target crashed (the input is left in
# fuzz/artifacts/<target>/).
#
#   FUZZ_SECONDS=600 fuzz/run.sh                 # every target, 10 minutes each
#   FUZZ_SECONDS=20 fuzz/run.sh manifest oci_artifact
#   FUZZ_SANITIZER=address fuzz/run.sh           # ASan (slower; default none: safe Rust, the
#                                                # C dependencies are not instrumented anyway)
#   FUZZ_BUILD_ONLY=1 (build only) / FUZZ_RSS_MB=2048 / FUZZ_NICE=19
set -euo pipefail
FUZZ_DIR=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$FUZZ_DIR")
SECONDS_EACH=${FUZZ_SECONDS:-60}
# FUZZ_RUNS=N: N executions per target from a fixed seed instead of a time: the same inputs on
# every machine, so a smoke in CI fails only on a change, never on a lucky mutation.
if [[ -n ${FUZZ_RUNS:-} ]]; then
  BOUND=(-runs="$FUZZ_RUNS" -seed=1)
  SHOWN="$FUZZ_RUNS runs"
else
  BOUND=(-max_total_time="$SECONDS_EACH")
  SHOWN="${SECONDS_EACH}s"
fi
SANITIZER=${FUZZ_SANITIZER:-none}
RSS_MB=${FUZZ_RSS_MB:-2048}
CARGO_FUZZ=$("$ROOT/e2e/cargo-fuzz.sh")
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$FUZZ_DIR/target}
NICE=(nice -n "${FUZZ_NICE:-19}")

ALL=(bundle_reader manifest signatures oci_artifact line_protocol host_api_args router_payload trust_policy_merge)
if [[ $# -gt 0 ]]; then TARGETS=("$@"); else TARGETS=("${ALL[@]}"); fi

cd "$ROOT"
# -O: optimised; -a: debug assertions (integer overflow panics are findings too).
FLAGS=(--fuzz-dir "$FUZZ_DIR" -O -a -s "$SANITIZER")
LOGS=$CARGO_TARGET_DIR/fuzz-logs
mkdir -p "$LOGS"
build_start=$(date +%s)
# One build for every target (they share the dependencies), or one per target named.
if [[ $# -eq 0 ]]; then builds=(all); else builds=("${TARGETS[@]}"); fi
for t in "${builds[@]}"; do
  one=("$t"); [[ $t != all ]] || one=()
  if ! "${NICE[@]}" "$CARGO_FUZZ" build "${FLAGS[@]}" "${one[@]}" >"$LOGS/build.log" 2>&1; then
    grep -v '^\s*Compiling ' "$LOGS/build.log" | tail -40 >&2
    echo "fuzz build failed (log: $LOGS/build.log)" >&2
    exit 2
  fi
done
echo "built ${#TARGETS[@]} targets in $(( $(date +%s) - build_start )) s" >&2
[[ -z ${FUZZ_BUILD_ONLY:-} ]] || exit 0

failed=0
declare -A EXECS RATE VERDICT
for t in "${TARGETS[@]}"; do
  mkdir -p "$FUZZ_DIR/corpus/$t" "$FUZZ_DIR/artifacts/$t"
  # New inputs go to a scratch corpus so the committed seeds stay small; merge by hand
  # (cargo fuzz cmin) when worth keeping.
  work=$FUZZ_DIR/target/corpus/$t
  mkdir -p "$work"
  echo "fuzzing $t for $SHOWN" >&2
  set +e
  "${NICE[@]}" "$CARGO_FUZZ" run "${FLAGS[@]}" "$t" \
    "$work" "$FUZZ_DIR/corpus/$t" -- \
    "${BOUND[@]}" -print_final_stats=1 -rss_limit_mb="$RSS_MB" \
    -timeout=10 -max_len=65536 \
    >"$LOGS/$t.log" 2>&1
  rc=$?
  set -e
  EXECS[$t]=$(awk '/stat::number_of_executed_units/ {print $2}' "$LOGS/$t.log" | tail -1)
  RATE[$t]=$(awk '/stat::average_exec_per_sec/ {print $2}' "$LOGS/$t.log" | tail -1)
  if [[ $rc -eq 0 ]]; then
    VERDICT[$t]=ok
  else
    VERDICT[$t]="CRASH (rc $rc, see $LOGS/$t.log, fuzz/artifacts/$t/)"
    failed=1
    grep -m3 -E "panicked at|^SUMMARY|Test unit written" "$LOGS/$t.log" >&2 || true
  fi
done

printf '\n%-16s %14s %10s  %s\n' target executions execs/s result
for t in "${TARGETS[@]}"; do
  printf '%-16s %14s %10s  %s\n' "$t" "${EXECS[$t]:-?}" "${RATE[$t]:-?}" "${VERDICT[$t]}"
done
exit $failed
