#!/usr/bin/env bash
# python-runtime.sh <dir>: fills <dir> with a minimal Python runtime taken from this machine's
# Debian python3 (the interpreter, the shared libraries it and its extension modules load, the
# standard library without tests, IDLE, tkinter and pip), for a FROM-scratch plugin image whose
# code comes from its signed bundle. No Docker engine: the directory becomes an image layer.
set -euo pipefail
out=$1
PY=/usr/bin/python3
[ -x "$PY" ] || { echo "python-runtime.sh: $PY missing (apt-get install python3)" >&2; exit 1; }
real=$(readlink -f "$PY")
ver=$("$real" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
lib=/usr/lib/python$ver
mkdir -p "$out/usr/bin" "$out/usr/lib"
cp "$real" "$out/usr/bin/python$ver"
ln -sf "python$ver" "$out/usr/bin/python3"
tar -C /usr/lib -cf - \
  --exclude="python$ver/test" --exclude="python$ver/idlelib" --exclude="python$ver/tkinter" \
  --exclude="python$ver/ensurepip" --exclude="python$ver/lib2to3" --exclude='__pycache__' \
  --exclude="python$ver/config-*" --exclude="python$ver/site-packages" \
  --exclude="python$ver/dist-packages" "python$ver" | tar -C "$out/usr/lib" -xf -
# Every shared library the interpreter and its extension modules need, at the same paths.
{ ldd "$real"; find "$lib/lib-dynload" -name '*.so' -exec ldd {} \; 2>/dev/null; } |
  grep -o '/[^ ]*\.so[^ ]*' | sort -u | while read -r so; do
    [ -e "$so" ] || continue
    mkdir -p "$out$(dirname "$so")"
    cp -L "$so" "$out$so"
  done
