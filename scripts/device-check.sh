#!/usr/bin/env bash
# Every GPU check, on a machine with an NVIDIA GPU, PyTorch for CUDA and Python, but no
# Rust toolchain and no network: the harden binary, its benchmark binary, the
# onnxruntime-gpu libraries and the benchmark network come prebuilt in a folder.
#
# Usage: scripts/device-check.sh [all|torch|harden] [DIR]
#   DIR (default .gpu/dev; outside the repository if the machine re-syncs it between
#   calls): harden, bench_gpu, libonnxruntime.so, libonnxruntime_providers_{shared,cuda}.so,
#   and optionally preact18.onnx (else exported there by gpu_bench_torch.py, which needs
#   the onnx package); any NAME.xz there is unpacked first (so the pieces may arrive
#   compressed, over several calls).
#   torch: the machine's facts and the PyTorch side of the benchmark; harden: harden's
#   checks and side of the benchmark, then the table; all (default): both.
# Checks: the CUDA provider starts (`--device cuda`, and `auto` picks it); the same audits
# on the CPU and on CUDA agree (clean accuracy exactly, robust accuracies within two
# examples, and `cuda:0,0`, the batch split over two sessions, as `cuda:0`; PGD with its
# steps bound on the device against PGD's host loop on the CPU); a hardening
# run on CUDA; bad devices are refused with exit 2 (`cuda:7`, tract with cuda); a real
# out of memory (`--gpu-memory-limit`) met by halving in audits and smaller runs in
# training.
# Logs and reports go to $OUT (default DIR/out) as well as stdout.
set -uo pipefail
PHASE="${1:-all}"
DIR="${2:-.gpu/dev}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
# Every log in $DIR/out; $OUT (where the machine sends files back, a few at most) gets
# the main log, the benchmark's results and a tarball of the rest.
FINAL="${OUT:-}"
OUT="$DIR/out"
mkdir -p "$OUT"
finish() {
  if [ -n "$FINAL" ]; then
    cp "$OUT/device-check.log" "$FINAL/" 2>/dev/null
    cp "$DIR"/bench/results.jsonl "$FINAL/" 2>/dev/null
    tar czf "$FINAL/logs.tar.gz" -C "$OUT" --exclude='*.onnx' --exclude=prof . 2>/dev/null
  fi
}
trap finish EXIT
here="$(cd "$(dirname "$0")" && pwd)"
PY="${PYTHON:-python3}"
exec > >(tee -a "$OUT/device-check.log") 2>&1
fails=0
ok() { echo "PASS  $*"; }
bad() { echo "FAIL  $*"; fails=$((fails + 1)); }

# Unpack NAME.xz pieces (NAME.xz.partNN are joined first).
for f in "$DIR"/*.xz.part00; do
  [ -e "$f" ] || continue
  base="${f%.part00}"
  cat "$base".part* > "$base" && rm -f "$base".part*
done
for f in "$DIR"/*.xz; do
  [ -e "$f" ] || continue
  "$PY" -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],"wb"))' "$f" "${f%.xz}.tmp" \
    && mv "${f%.xz}.tmp" "${f%.xz}" && rm -f "$f" || { rm -f "${f%.xz}.tmp"; echo "FAIL  cannot unpack $f (a piece missing or cut short?)"; }
done
# scripts/device-pack.sh's checksums of what it packed: a piece lost on the way (the
# machine gone back between calls) stops the check here with one line.
if [ -f "$DIR/MANIFEST.sha256" ]; then
  if ! (cd "$DIR" && sha256sum --quiet -c MANIFEST.sha256); then
    echo "FAIL  $DIR does not hold what scripts/device-pack.sh packed (see above): carry the pieces again"
    exit 2
  fi
fi
chmod +x "$DIR/harden" "$DIR/bench_gpu" 2>/dev/null

section() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }

if [ "$PHASE" = all ] || [ "$PHASE" = torch ]; then
  section "machine"
  ldd --version | head -n 1
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PY" -c 'import torch,sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), torch.cuda.get_device_name(0))'
  "$PY" -c 'import onnx; print("onnx", onnx.__version__)' 2>/dev/null || echo "onnx: not installed"
  site="$("$PY" -c 'import torch,os; print(os.path.dirname(os.path.dirname(torch.__file__)))')"
  echo "site-packages: $site"
  ls -d "$site"/nvidia/*/lib 2>/dev/null
  ls "$site"/nvidia/*/lib 2>/dev/null | grep -E 'libcu(rand|blas|dart|dnn)\.so' | tr '\n' ' '; echo
  section "PyTorch side of the benchmark"
  GPU_BENCH_TOOLS=torch TORCH_SCRIPT="$here/gpu_bench_torch.py" bash "$here/gpu-bench.sh" "$DIR/bench"
fi

[ "$PHASE" = torch ] && exit 0

H="$DIR/harden"
export ORT_DYLIB_PATH="$DIR/libonnxruntime.so"
# The provider links libcurand.so.10 without calling it; PyTorch for CUDA 13 ships none.
# A library of that name with no code stands in when the machine has no real one.
if ! ldconfig -p | grep -q 'libcurand.so.10' && ! ls "$("$PY" -c 'import torch,os; print(os.path.dirname(os.path.dirname(torch.__file__)))')"/nvidia/*/lib/libcurand.so.10 >/dev/null 2>&1; then
  if [ -f "$DIR/libcurand.so.10" ]; then
    echo "libcurand.so.10 absent: using the empty stand-in $DIR/libcurand.so.10"
    export LD_LIBRARY_PATH="$DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
fi

expect_exit() { # CODE NAME CMD...: runs CMD, checks its exit code, shows its stderr
  local want="$1" name="$2"; shift 2
  "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
  local rc=$?
  if [ "$rc" = "$want" ]; then ok "$name: exit $rc"; else bad "$name: exit $rc, expected $want"; fi
  sed 's/^/      /' "$OUT/$name.err" | tail -n 5
}

section "errors"
M=models/fmnist_cnn.onnx
D=data/fashion-mnist-slice
expect_exit 2 "cuda7" "$H" audit "$M" --data "$D" --device cuda:7
grep -q "CUDA device" "$OUT/cuda7.err" && ok "cuda:7: the devices there named" || bad "cuda:7: no device count in the message"
expect_exit 2 "tract-cuda" "$H" audit "$M" --data "$D" --runtime tract --device cuda
expect_exit 2 "bad-device" "$H" audit "$M" --data "$D" --device tpu
# The CPU build of ONNX Runtime (no provider next to it) with --device cuda.
mkdir -p "$DIR/cpuonly" && cp "$DIR/libonnxruntime.so" "$DIR/cpuonly/"
ORT_DYLIB_PATH="$DIR/cpuonly/libonnxruntime.so" expect_exit 2 "no-provider" "$H" audit "$M" --data "$D" --device cuda
# The CUDA libraries out of reach (no Python on PATH, no LD_LIBRARY_PATH).
env -u LD_LIBRARY_PATH -u VIRTUAL_ENV -u CONDA_PREFIX PATH=/nonexistent HOME=/nonexistent \
  ORT_DYLIB_PATH="$ORT_DYLIB_PATH" "$H" audit "$M" --data "$D" --device cuda > "$OUT/no-cuda-libs.out" 2> "$OUT/no-cuda-libs.err"
echo "no CUDA libraries reachable: exit $? ($(tail -n 1 "$OUT/no-cuda-libs.err" | cut -c1-300))"

section "the same audits on the CPU and on CUDA"
audit() { # NAME MODEL DEVICE EXTRA...
  local name="$1" model="$2" dev="$3"; shift 3
  local t0=$(date +%s%N)
  "$H" audit "$model" --data "$D" --eps 0.1 --device "$dev" --json "$OUT/$name.json" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
  local rc=$?
  echo "$name: exit $rc, $(( ($(date +%s%N) - t0) / 1000000 )) ms; $(grep -E '^device' "$OUT/$name.err" | head -n 1)"
  [ $rc = 0 ] || tail -n 3 "$OUT/$name.err"
}
compare() { # A B: clean exactly, robust within two examples
  "$PY" - "$OUT/$1.json" "$OUT/$2.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
ra, rb = a["audit"], b["audit"]
n = ra["data"]["examples"]
ca, cb = ra["clean"]["accuracy"], rb["clean"]["accuracy"]
print(f"  clean {ca:.4f} vs {cb:.4f}; devices {a['meta'].get('device')} vs {b['meta'].get('device')}")
ok = ca == cb
def accs(x, out):
    if isinstance(x, dict):
        for k, v in x.items():
            if k == "robust_accuracy" and isinstance(v, (int, float)):
                out.append(v)
            else:
                accs(v, out)
    elif isinstance(x, list):
        for v in x:
            accs(v, out)
    return out
xa, xb = accs(ra.get("robust"), []), accs(rb.get("robust"), [])
print(f"  robust accuracies {xa}\n                vs {xb}")
diff = max((abs(p - q) for p, q in zip(xa, xb)), default=0.0)
print(f"  {len(xa)} robust accuracies, largest difference {diff:.4f} ({diff * n:.1f} examples of {n})")
ok = ok and len(xa) == len(xb) and diff <= 2.0 / n + 1e-9
print("  AGREE" if ok else "  DIFFER")
sys.exit(0 if ok else 1)
PY
  if [ $? = 0 ]; then ok "$1 = $2"; else bad "$1 != $2"; fi
}
audit cpu-fmnist "$M" cpu --threads 8
audit cuda-fmnist "$M" cuda
compare cpu-fmnist cuda-fmnist
audit auto-fmnist "$M" auto
"$PY" -c 'import json,sys; m=json.load(open(sys.argv[1]))["meta"]; print("auto ran on", m.get("device"), m.get("device_note",""))' "$OUT/auto-fmnist.json" 2>/dev/null
audit split-fmnist "$M" cuda:0,0
compare cuda-fmnist split-fmnist
# PGD: on CUDA its steps run in the step graph with the iterate bound on the device
# (runtime::StepMode::Bound), on the CPU in PGD's host loop.
audit cpu-fmnist-pgd "$M" cpu --threads 8 --attacks pgd
audit cuda-fmnist-pgd "$M" cuda --attacks pgd
compare cpu-fmnist-pgd cuda-fmnist-pgd
loop=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["meta"].get("step_loop"))' "$OUT/cuda-fmnist-pgd.json" 2>/dev/null)
[ "$loop" = bound ] && ok "PGD on CUDA ran bound" || bad "PGD on CUDA ran $loop, not bound"
audit cpu-wong models/wong_cnn.onnx cpu --threads 8
audit cuda-wong models/wong_cnn.onnx cuda
compare cpu-wong cuda-wong

section "hardening on CUDA (and the same on the CPU)"
# cuda: the default on CUDA, bound (weights and optimiser state held on the device,
# train::resident); cuda-host: the same with the host loop; cpu: the host loop on the CPU.
for run in cuda cuda-host cpu; do
  dev=${run%-host}; extra=()
  [ "$run" = cuda-host ] && extra=(--step-loop host)
  t0=$(date +%s%N)
  "$H" "$M" --eps 0.1 --data "$D" --epochs 1 --device "$dev" --threads 8 "${extra[@]}" -o "$OUT/hardened-$run.onnx" --report "$OUT/harden-$run" > "$OUT/harden-$run.out" 2> "$OUT/harden-$run.err"
  rc=$?
  echo "harden --device $dev ${extra[*]}: exit $rc, $(( ($(date +%s%N) - t0) / 1000000 )) ms"
  tail -n 6 "$OUT/harden-$run.out"
  [ $rc = 0 ] || tail -n 3 "$OUT/harden-$run.err"
done
"$PY" - "$OUT/harden-cuda/report.json" "$OUT/harden-cuda-host/report.json" "$OUT/harden-cpu/report.json" <<'PY' || bad "hardening reports"
import json, sys
rows = []
for p in sys.argv[1:]:
    r = json.load(open(p))
    m = r["meta"]
    rows.append(r)
    print(f"  {m.get('device')} step loop {m.get('step_loop')}, weights on the {m.get('train_weights')}: before clean {r['before']['clean']['accuracy']:.4f} after clean {r['after']['clean']['accuracy']:.4f}; epoch seconds {m.get('epoch_seconds')}")
assert rows[0]["meta"].get("train_weights") == "bound", "CUDA training did not hold the weights on the device"
assert rows[1]["meta"].get("train_weights") == "host"
# The same training in another order of sums: the hardened models' clean accuracy
# within 2% of each other.
accs = [r["after"]["clean"]["accuracy"] for r in rows]
assert max(accs) - min(accs) <= 0.02, f"hardened clean accuracies differ: {accs}"
PY

section "out of memory on CUDA (each session's arena capped with --gpu-memory-limit)"
# A real allocation failure of the CUDA provider at a small size: the audit runs again at
# half the batch size until its runs fit and reports what the uncapped CUDA audit does;
# hardening keeps its batches and runs its graphs in smaller runs (weights leave the
# device if they were bound there).
audit cuda-fmnist-capped "$M" cuda --batch-size 1024 --gpu-memory-limit 64M
grep -E "out of memory|again at" "$OUT/cuda-fmnist-capped.err" | sed 's/^/      /' | head -n 8
if grep -q "ran out of memory at --batch-size 1024" "$OUT/cuda-fmnist-capped.err"; then
  ok "capped audit: out of memory met and the batch halved"
else
  bad "capped audit: no halving seen (see cuda-fmnist-capped.err)"
fi
compare cuda-fmnist cuda-fmnist-capped
t0=$(date +%s%N)
"$H" "$M" --eps 0.1 --data "$D" --epochs 1 --device cuda --batch-size 512 --gpu-memory-limit 64M \
  -o "$OUT/hardened-capped.onnx" --report "$OUT/harden-capped" > "$OUT/harden-capped.out" 2> "$OUT/harden-capped.err"
rc=$?
echo "harden --device cuda --gpu-memory-limit 64M: exit $rc, $(( ($(date +%s%N) - t0) / 1000000 )) ms"
grep -E "out of memory|runs of|go back" "$OUT/harden-capped.err" | sed 's/^/      /' | head -n 8
[ $rc = 0 ] && ok "capped hardening finished" || { bad "capped hardening: exit $rc"; tail -n 3 "$OUT/harden-capped.err"; }

section "harden's side of the benchmark"
BENCH_GPU="$DIR/bench_gpu" MODEL="$DIR/preact18.onnx" GPU_BENCH_TOOLS=harden TORCH_SCRIPT="$here/gpu_bench_torch.py" \
  bash "$here/gpu-bench.sh" "$DIR/bench"
cp "$DIR"/bench/*.err "$OUT"/ 2>/dev/null

section "a conv's weight gradient on CUDA: matrix product over shifted views or correlation"
# gemm_pays chose between them on ONNX Runtime's CPU kernels; here a short Fast-AT epoch
# with each forced (HARDEN_CONV_WEIGHT_GRAD) and with the CPU-tuned choice.
if [ -f "$DIR/preact18.onnx" ]; then
  for form in auto gemm correlation; do
    HARDEN_CONV_WEIGHT_GRAD=$form timeout 90 "$DIR/bench_gpu" --model "$DIR/preact18.onnx" --device cuda \
      --precision tf32 --work fast --images 5120 > "$OUT/wgrad-$form.out" 2> "$OUT/wgrad-$form.err"
    echo "$form: $(grep '^{' "$OUT/wgrad-$form.out" | tail -n 1)"
    grep -q '^{' "$OUT/wgrad-$form.out" || tail -n 3 "$OUT/wgrad-$form.err"
  done
else
  echo "no $DIR/preact18.onnx: skipped"
fi

section "where a Fast-AT step's time goes (ONNX Runtime profiles, scripts/ort-profile.py)"
# Per session: runs and their total (synchronised) time; per op type the host-side time of
# each kernel and the provider it ran on: nodes placed on the CPU inside a CUDA session
# (and the Memcpy nodes around them) are what to look for.
mkdir -p "$OUT/prof"
if [ -f "$DIR/preact18.onnx" ]; then
  HARDEN_ORT_PROFILE="$OUT/prof/fast" "$DIR/bench_gpu" --model "$DIR/preact18.onnx" --device cuda \
    --work fast --images 2048 > "$OUT/prof-fast.out" 2> "$OUT/prof-fast.err" || tail -n 3 "$OUT/prof-fast.err"
  "$PY" "$here/ort-profile.py" "$OUT"/prof/fast-*.json --top 12 || bad "ort-profile"
else
  echo "no $DIR/preact18.onnx: profile skipped"
fi

section "done: $fails failed check(s)"
exit $((fails > 0))
