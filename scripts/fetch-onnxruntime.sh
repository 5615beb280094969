#!/usr/bin/env bash
# Fetch libonnxruntime.so from the PyPI `onnxruntime` wheel (no other network source needed)
# and put it where harden looks for it: ~/.cache/harden/onnxruntime/libonnxruntime.so
# (or the folder given as $1). Prints the library path; export ORT_DYLIB_PATH to it, or rely
# on harden's search of the cache folder.
set -euo pipefail
VERSION="${ORT_VERSION:-1.31.1}"
DEST="${1:-${HOME}/.cache/harden/onnxruntime}"
if [ -f "$DEST/libonnxruntime.so" ] && [ -f "$DEST/VERSION" ] && [ "$(cat "$DEST/VERSION")" = "$VERSION" ]; then
  echo "$DEST/libonnxruntime.so"
  exit 0
fi
mkdir -p "$DEST"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "onnxruntime==${VERSION}" >&2
wheel="$(ls "$tmp"/onnxruntime-*.whl | head -n 1)"
python3 - "$wheel" "$tmp/lib" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith("onnxruntime/capi/libonnxruntime.so")]
    if not names:
        sys.exit("no libonnxruntime.so in " + wheel)
    for n in names:
        z.extract(n, out)
PY
lib="$(ls "$tmp"/lib/onnxruntime/capi/libonnxruntime.so* | head -n 1)"
cp "$lib" "$DEST/libonnxruntime.so.tmp"
mv "$DEST/libonnxruntime.so.tmp" "$DEST/libonnxruntime.so"
echo "$VERSION" > "$DEST/VERSION"
echo "$DEST/libonnxruntime.so"
