#!/usr/bin/env bash
# Fetch libonnxruntime.so from the PyPI `onnxruntime` wheel (no other network source needed)
# and put it where harden looks for it: ~/.cache/harden/onnxruntime/libonnxruntime.so
# (or the folder given as the first argument). Prints the library path; export
# ORT_DYLIB_PATH to it, or rely on harden's search of the cache folder.
#
# --gpu: the PyPI `onnxruntime-gpu` wheel instead (same version), into
# ~/.cache/harden/onnxruntime-gpu/: libonnxruntime.so with the provider libraries
# libonnxruntime_providers_{shared,cuda}.so next to it (where `--device cuda` looks first).
# Prints the CUDA and cuDNN libraries the CUDA provider needs (its ELF NEEDED entries, and
# the ones it opens by name at run time) and where harden looks for them.
# --cuda-libs (with --gpu): also fetch those CUDA and cuDNN libraries from PyPI's nvidia-*
# wheels into ~/.cache/harden/onnxruntime-gpu/nvidia/*/lib (several hundred MB), for a
# machine without them (a PyTorch install with CUDA of the same major version has them).
set -euo pipefail
VERSION="${ORT_VERSION:-1.31.1}"
GPU=0
CUDA_LIBS=0
DEST=""
for arg in "$@"; do
  case "$arg" in
    --gpu) GPU=1 ;;
    --cuda-libs) CUDA_LIBS=1 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    -*) echo "unknown option $arg (expected --gpu, --cuda-libs or a folder)" >&2; exit 2 ;;
    *) DEST="$arg" ;;
  esac
done
if [ "$CUDA_LIBS" = 1 ] && [ "$GPU" = 0 ]; then
  echo "--cuda-libs goes with --gpu" >&2
  exit 2
fi
if [ "$GPU" = 1 ]; then
  PACKAGE=onnxruntime-gpu
  DEST="${DEST:-${HOME}/.cache/harden/onnxruntime-gpu}"
  LIBS="libonnxruntime.so libonnxruntime_providers_shared.so libonnxruntime_providers_cuda.so"
else
  PACKAGE=onnxruntime
  DEST="${DEST:-${HOME}/.cache/harden/onnxruntime}"
  LIBS="libonnxruntime.so"
fi

# What the CUDA provider needs, and where harden looks for it.
explain_gpu() {
  local prov="$DEST/libonnxruntime_providers_cuda.so"
  local needed cudart cuda_major
  needed="$(readelf -d "$prov" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | grep -E '^lib(cu|nv)' || true)"
  cudart="$(echo "$needed" | grep -E '^libcudart\.so\.' | head -n 1)"
  cuda_major="${cudart##*.so.}"
  {
    echo "The CUDA provider needs CUDA ${cuda_major:-?} and cuDNN 9:"
    for n in $needed; do
      if [ "$n" = libcuda.so.1 ]; then
        echo "  $n  (the NVIDIA driver)"
      else
        echo "  $n"
      fi
    done
    echo "  libnvrtc.so.${cuda_major:-?}, libcudnn.so.9 and its parts (opened by name at run time)"
    echo "harden loads them from, in order: the nvidia/*/lib folders of the PyPI nvidia-* wheels"
    echo "  ($DEST/nvidia/*/lib, then the site-packages of \$VIRTUAL_ENV, \$CONDA_PREFIX, the"
    echo "  Pythons on PATH, ~/.local, /usr/local, /usr, /opt/conda), then LD_LIBRARY_PATH and"
    echo "  the system's folders (ldconfig). A PyTorch built for CUDA ${cuda_major:-?} brings them."
    if [ "$cuda_major" -ge 13 ] 2>/dev/null; then sfx=""; else sfx="-cu${cuda_major}"; fi
    echo "Without them: $0 --gpu --cuda-libs, or"
    echo "  pip install nvidia-cuda-runtime$sfx nvidia-cublas$sfx nvidia-curand$sfx nvidia-cuda-nvrtc$sfx nvidia-cudnn-cu${cuda_major}"
  } >&2
  CUDA_MAJOR="$cuda_major"
}

fetch_cuda_libs() {
  local sfx pkgs tmp2
  if [ "$CUDA_MAJOR" -ge 13 ] 2>/dev/null; then sfx=""; else sfx="-cu${CUDA_MAJOR}"; fi
  pkgs="nvidia-cuda-runtime$sfx nvidia-cublas$sfx nvidia-curand$sfx nvidia-cuda-nvrtc$sfx nvidia-nvjitlink$sfx nvidia-cudnn-cu${CUDA_MAJOR}"
  tmp2="$(mktemp -d)"
  # shellcheck disable=SC2086
  python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp2" $pkgs >&2
  python3 - "$DEST" "$tmp2"/*.whl <<'PY'
import os, sys, zipfile
dest, wheels = sys.argv[1], sys.argv[2:]
for w in wheels:
    with zipfile.ZipFile(w) as z:
        for n in z.namelist():
            if n.startswith("nvidia/") and "/lib/" in n and ".so" in os.path.basename(n):
                z.extract(n, dest)
                os.chmod(os.path.join(dest, n), 0o755)
PY
  rm -rf "$tmp2"
  echo "CUDA libraries in $DEST/nvidia/*/lib" >&2
}

have_all() {
  for l in $LIBS; do [ -f "$DEST/$l" ] || return 1; done
  [ -f "$DEST/VERSION" ] && [ "$(cat "$DEST/VERSION")" = "$VERSION" ]
}

if ! have_all; then
  mkdir -p "$DEST"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "${PACKAGE}==${VERSION}" >&2
  wheel="$(ls "$tmp"/"${PACKAGE//-/_}"-*.whl | head -n 1)"
  python3 - "$wheel" "$tmp/lib" $LIBS <<'PY'
import sys, zipfile
wheel, out, libs = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    names = z.namelist()
    for lib in libs:
        found = [n for n in names if n.startswith("onnxruntime/capi/" + lib)]
        if not found:
            sys.exit(f"no {lib} in {wheel}")
        z.extract(found[0], out)
PY
  for l in $LIBS; do
    src="$(ls "$tmp"/lib/onnxruntime/capi/"$l"* | head -n 1)"
    cp "$src" "$DEST/$l.tmp"
    mv "$DEST/$l.tmp" "$DEST/$l"
  done
  echo "$VERSION" > "$DEST/VERSION"
fi
if [ "$GPU" = 1 ]; then
  explain_gpu
  if [ "$CUDA_LIBS" = 1 ]; then
    fetch_cuda_libs
  fi
fi
echo "$DEST/libonnxruntime.so"
