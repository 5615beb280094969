#!/usr/bin/env bash
# Packs what scripts/device-check.sh needs on a GPU machine that has no Rust toolchain
# into carries that fit the device tool's limit, and prints the calls that take them
# there and run the check.
#
# Usage: scripts/device-pack.sh [BUDGET_MIB]
#   Builds harden and examples/bench_gpu (the dev profile, as the tests), strips copies
#   of them, takes the onnxruntime-gpu libraries from harden's cache (run
#   scripts/fetch-onnxruntime.sh --gpu first), compresses each with xz and cuts the
#   result into pieces, then fills the folders .gpu/c1, .gpu/c2, ... (ignored by git)
#   with at most BUDGET_MIB each (default: 62 MiB less the tracked files, which travel
#   with every call). preact18.onnx is not carried: device-check.sh exports it there
#   with PyTorch and onnx.
# Each printed call copies its folder into /tmp/harden-dev on the device machine (kept
# while the machine stays warm, about 30 s between calls); the last two run the check's
# PyTorch side and harden's side (each well inside one call's 600 s), which first join
# and unpack the pieces (NAME.xz.partNN, NAME.xz) and verify them against
# MANIFEST.sha256.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# What travels with every call: tracked files and untracked ones git does not ignore.
tree_bytes=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
tree_mib=$(( (tree_bytes + 1048575) / 1048576 ))
budget_mib="${1:-$((62 - tree_mib))}"
case "$budget_mib" in
  '' | *[!0-9]*) echo "device-pack: BUDGET_MIB must be a whole number of MiB, not '$budget_mib'" >&2; exit 2 ;;
esac
if [ "$budget_mib" -lt 8 ]; then
  echo "device-pack: only $budget_mib MiB per carry besides the $tree_mib MiB tree" >&2
  exit 2
fi
ort_dir="${HARDEN_ORT_GPU_DIR:-$HOME/.cache/harden/onnxruntime-gpu}"
libs=(libonnxruntime.so libonnxruntime_providers_shared.so libonnxruntime_providers_cuda.so)
for l in "${libs[@]}"; do
  if [ ! -f "$ort_dir/$l" ]; then
    echo "device-pack: no $ort_dir/$l: run scripts/fetch-onnxruntime.sh --gpu" >&2
    exit 2
  fi
done

cargo build --bin harden --example bench_gpu
work="$root/.gpu/pack"
rm -rf "$work" "$root"/.gpu/c[0-9]*
mkdir -p "$work"
cp target/debug/harden target/debug/examples/bench_gpu "$work/"
strip "$work/harden" "$work/bench_gpu"
for l in "${libs[@]}"; do cp "$ort_dir/$l" "$work/"; done
# curand's empty stand-in, where the build machine has a compiler (see device-check.sh).
if command -v cc >/dev/null; then
  echo 'void harden_curand_stand_in(void) {}' > "$work/stub.c"
  cc -shared -fPIC -Wl,-soname,libcurand.so.10 -o "$work/libcurand.so.10" "$work/stub.c" && rm "$work/stub.c"
fi

# The unpacked files' checksums, which device-check.sh verifies before using them (a
# piece lost when the machine went back between calls shows there as one clear line).
(cd "$work" && sha256sum -- *) > "$root/.gpu/MANIFEST.sha256"
piece_mib=$(( budget_mib < 60 ? budget_mib : 60 ))
for f in "$work"/*; do
  name="$(basename "$f")"
  xz -T0 -6 -c "$f" > "$work/$name.xz"
  rm "$f"
  if [ "$(stat -c %s "$work/$name.xz")" -gt $((piece_mib * 1048576)) ]; then
    split -b "${piece_mib}M" -d -a 2 "$work/$name.xz" "$work/$name.xz.part"
    rm "$work/$name.xz"
  fi
done

# First fit, largest pieces first, into folders of at most budget_mib.
n=0
declare -A used
while read -r size path; do
  placed=""
  for ((i = 1; i <= n; i++)); do
    if [ $((used[$i] + size)) -le $((budget_mib * 1048576)) ]; then placed=$i; break; fi
  done
  if [ -z "$placed" ]; then n=$((n + 1)); placed=$n; used[$n]=0; mkdir -p "$root/.gpu/c$n"; fi
  mv "$path" "$root/.gpu/c$placed/"
  used[$placed]=$((used[$placed] + size))
done < <(find "$work" -type f -printf '%s %p\n' | sort -rn)
rmdir "$work"
mv "$root/.gpu/MANIFEST.sha256" "$root/.gpu/c$n/"

echo "$n carries of at most $budget_mib MiB (the tree: $tree_mib MiB):"
for ((i = 1; i <= n; i++)); do
  echo "  .gpu/c$i: $(ls ".gpu/c$i" | tr '\n' ' ')($(( used[$i] / 1048576 )) MiB)"
done
echo
echo "device calls, one after the other (the machine stays warm about 30 s between them):"
for ((i = 1; i < n; i++)); do
  echo "  run carry=[\".gpu/c$i\"] command='mkdir -p /tmp/harden-dev && cp .gpu/c$i/* /tmp/harden-dev/'"
done
echo "  run carry=[\".gpu/c$n\"] timeout_s=600 command='mkdir -p /tmp/harden-dev && cp .gpu/c$n/* /tmp/harden-dev/ && scripts/device-check.sh torch /tmp/harden-dev'"
echo "  run timeout_s=600 command='scripts/device-check.sh harden /tmp/harden-dev'"
