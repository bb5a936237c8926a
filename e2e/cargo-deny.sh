#!/usr/bin/env bash
# Checks the dependency tree against deny.toml (licenses, bans, sources) with cargo-deny, built
# from crates.io once and cached under ~/.cache/airlock/bin. Offline: the advisory database needs
# GitHub (see deny.toml).
set -euo pipefail
VERSION=0.20.2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN_DIR=${AIRLOCK_CACHE:-$HOME/.cache/airlock}/bin/cargo-deny-$VERSION
if [[ ! -x $BIN_DIR/bin/cargo-deny ]]; then
  echo "building cargo-deny $VERSION (once, cached in $BIN_DIR)" >&2
  cargo install --locked --quiet cargo-deny --version "$VERSION" --root "$BIN_DIR.tmp"
  rm -rf "$BIN_DIR" && mv "$BIN_DIR.tmp" "$BIN_DIR"
fi
cd "$ROOT"
# cargo-deny reads the metadata of every target platform, whose crates a build on this machine
# never downloaded (android_system_properties, ...): offline, a fresh machine failed there.
# crates.io is reachable; only the advisory database is not.
cargo fetch --locked --quiet
"$BIN_DIR/bin/cargo-deny" --locked --offline check --hide-inclusion-graph licenses bans sources
