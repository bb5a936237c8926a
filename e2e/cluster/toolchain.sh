#!/usr/bin/env bash
# Installs the pinned Rust toolchain of rust-toolchain.toml with the musl target the images need.
# rustup reads `targets` from rust-toolchain.toml only when it installs the toolchain, never for a
# toolchain that is already there, so the target is added explicitly (a no-op when present).
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"
ROOT=$(cd "$CLUSTER_DIR/../.." && pwd)
channel=$(sed -n 's/^channel = "\(.*\)"/\1/p' "$ROOT/rust-toolchain.toml")
[ -n "$channel" ] || die "no channel in rust-toolchain.toml"
command -v rustup >/dev/null || die "rustup is not installed: see https://rustup.rs (rustup is how the pinned toolchain is installed)"
if ! rustup run "$channel" rustc --version >/dev/null 2>&1; then
  log "installing Rust $channel"
  (cd "$ROOT" && rustup toolchain install "$channel" --profile minimal --component rustfmt,clippy)
fi
for t in $(sed -n 's/^targets = \[\(.*\)\]/\1/p' "$ROOT/rust-toolchain.toml" | tr -d '",'); do
  if ! rustup target list --installed --toolchain "$channel" | grep -qx "$t"; then
    log "adding Rust target $t"
    rustup target add --toolchain "$channel" "$t" >/dev/null
  fi
done
log "Rust $channel with targets: $(rustup target list --installed --toolchain "$channel" | tr '\n' ' ')"
