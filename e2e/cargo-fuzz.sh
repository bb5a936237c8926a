#!/usr/bin/env bash
# Prints the path of a cargo-fuzz binary, built from crates.io once and cached under
# ~/.cache/airlock/bin (same scheme as e2e/cargo-deny.sh). cargo-fuzz needs nightly flags
# (-Zsanitizer); fuzz/run.sh runs it on the pinned stable toolchain with RUSTC_BOOTSTRAP=1.
set -euo pipefail
VERSION=0.13.2
BIN_DIR=${AIRLOCK_CACHE:-$HOME/.cache/airlock}/bin/cargo-fuzz-$VERSION
if [[ ! -x $BIN_DIR/bin/cargo-fuzz ]]; then
  echo "building cargo-fuzz $VERSION (once, cached in $BIN_DIR)" >&2
  nice -n 19 cargo install --locked --quiet cargo-fuzz --version "$VERSION" --root "$BIN_DIR.tmp" >&2
  rm -rf "$BIN_DIR" && mv "$BIN_DIR.tmp" "$BIN_DIR"
fi
echo "$BIN_DIR/bin/cargo-fuzz"
