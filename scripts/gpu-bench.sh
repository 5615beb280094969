#!/usr/bin/env bash
# harden on ONNX Runtime's CUDA provider against a hand-written PyTorch loop on the same
# GPU, back to back, one process per run: a PreActResNet-18 on random CIFAR-shaped data
# (throughput, not accuracy). PGD-10 on 10,000 images (batch 512), one Fast-AT (FGSM-RS)
# epoch and one PGD-7 AT epoch on 50,000 images; PyTorch in eager fp32 and bf16 autocast
# (and torch.compile fp32 with GPU_BENCH_COMPILE=1). Peak GPU memory per run: the device's
# used memory sampled by nvidia-smi every 100 ms, less what was in use before the run
# (so CUDA context and allocator caches included, for both tools alike). harden's PGD runs
# twice, and its Fast-AT epoch: with the steps in the graph and the iterate bound on the
# device (the default on CUDA; in training also the weights and the optimiser's state
# held on the device), and with the host loop (harden-pgd-hostloop, harden-fast-hostloop).
#
# Usage: scripts/gpu-bench.sh [WORKDIR]
#   BENCH_GPU  harden's benchmark binary (default: target/debug/examples/bench_gpu,
#              built with `cargo build --example bench_gpu`)
#   MODEL      the network as ONNX (default: exported by scripts/gpu_bench_torch.py)
#   PYTHON     a Python with PyTorch+CUDA (default python3)
#   ORT_DYLIB_PATH  the onnxruntime-gpu library (default: harden's cache, see
#              scripts/fetch-onnxruntime.sh --gpu)
#   GPU_BENCH_IMAGES_PGD / GPU_BENCH_IMAGES_TRAIN  image counts (10000 / 50000)
#   GPU_BENCH_TIMEOUT  seconds per run (default 300)
#   GPU_BENCH_PRECISION  harden's --precision: tf32 (default: PyTorch's convolutions use
#              TF32 too) or fp32
#   GPU_BENCH_TOOLS    which side(s) to run: "harden torch" (default), "harden" or
#              "torch"; results add to WORKDIR/results.jsonl (the table reads them all),
#              so the two sides may run one after the other in separate calls
# Prints one JSON line per run, then a table with harden's time over PyTorch's.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${1:-$(mktemp -d)}"
mkdir -p "$work"
PY="${PYTHON:-python3}"
BENCH="${BENCH_GPU:-target/debug/examples/bench_gpu}"
TORCH_SCRIPT="${TORCH_SCRIPT:-$here/gpu_bench_torch.py}"
N_PGD="${GPU_BENCH_IMAGES_PGD:-10000}"
N_TRAIN="${GPU_BENCH_IMAGES_TRAIN:-50000}"
LIMIT="${GPU_BENCH_TIMEOUT:-300}"
MODEL="${MODEL:-$work/preact18.onnx}"
results="$work/results.jsonl"
TOOLS="${GPU_BENCH_TOOLS:-harden torch}"
touch "$results"
has() { case " $TOOLS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
if has harden && [ ! -f "$MODEL" ]; then
  "$PY" "$TORCH_SCRIPT" export "$MODEL" >/dev/null || { echo "cannot export $MODEL" >&2; exit 2; }
fi
export RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0

used() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 | head -n 1; }

# run NAME CMD...: one run, its JSON line extended with the peak memory it added.
run() {
  local name="$1"; shift
  local base mem pid line
  base="$(used)"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 100 > "$work/$name.mem" 2>/dev/null &
  pid=$!
  timeout "$LIMIT" "$@" > "$work/$name.out" 2> "$work/$name.err"
  local rc=$?
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  mem="$(sort -n "$work/$name.mem" | tail -n 1)"
  line="$(grep '^{' "$work/$name.out" | tail -n 1)"
  if [ $rc -ne 0 ] || [ -z "$line" ]; then
    echo "{\"run\": \"$name\", \"failed\": $rc, \"error\": $(grep -v '^\s*$' "$work/$name.err" | head -n 3 | "$PY" -c 'import json,sys; print(json.dumps(sys.stdin.read()[:600]))')}" | tee -a "$results"
    return
  fi
  echo "$line" | "$PY" -c "import json,sys; d=json.loads(sys.stdin.read()); d['run']='$name'; d['peak_gpu_mib']=int('${mem:-0}' or 0)-int('${base:-0}' or 0); print(json.dumps(d))" | tee -a "$results"
}

for work_kind in pgd fast pgd-at; do
  n=$N_TRAIN; [ "$work_kind" = pgd ] && n=$N_PGD
  if has harden; then
    run "harden-$work_kind" "$BENCH" --model "$MODEL" --device cuda --precision "${GPU_BENCH_PRECISION:-tf32}" --work "$work_kind" --images "$n" --batch 512
    # Also with the host loop (a gradient graph run per step, the step on the host; in
    # training the weights and the optimiser's state on the host, sent in every step),
    # against the default above: the step graph with the iterate bound on the device
    # and, in training, the weights and the optimiser's state held there.
    if [ "$work_kind" != pgd-at ]; then
      run "harden-$work_kind-hostloop" "$BENCH" --model "$MODEL" --device cuda --precision "${GPU_BENCH_PRECISION:-tf32}" --work "$work_kind" --step host --images "$n" --batch 512
    fi
  fi
  has torch || continue
  run "torch-fp32-$work_kind" "$PY" "$TORCH_SCRIPT" bench --work "$work_kind" --precision fp32 --images "$n"
  run "torch-bf16-$work_kind" "$PY" "$TORCH_SCRIPT" bench --work "$work_kind" --precision bf16 --images "$n"
  if [ "${GPU_BENCH_COMPILE:-0}" = 1 ]; then
    run "torch-compile-$work_kind" "$PY" "$TORCH_SCRIPT" bench --work "$work_kind" --precision fp32 --compile --images "$n"
  fi
done

"$PY" - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {r["run"]: r for r in rows}  # the latest run of each name
print()
print(f"{'work':8} {'run':22} {'images/s':>10} {'seconds':>9} {'peak MiB':>9} {'harden time / this':>19}")
for w in ["pgd", "fast", "pgd-at"]:
    h = by.get(f"harden-{w}")
    for name in [f"harden-{w}", f"harden-{w}-hostloop", f"torch-fp32-{w}", f"torch-bf16-{w}", f"torch-compile-{w}"]:
        r = by.get(name)
        if r is None:
            continue
        if "failed" in r:
            print(f"{w:8} {name:22} failed (exit {r['failed']}): {r['error'][:200]!r}")
            continue
        ratio = ""
        if h and "failed" not in h and name != f"harden-{w}":
            ratio = f"{h['seconds'] / r['seconds']:.2f}x"
        print(f"{w:8} {name:22} {r['images_per_s']:>10.1f} {r['seconds']:>9.2f} {r.get('peak_gpu_mib', 0):>9} {ratio:>19}")
PY
echo "results: $results"
