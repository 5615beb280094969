#!/usr/bin/env bash
# PGD-10 Linf (eps 0.1) throughput on the demo model (or Wong's CNN): harden (ONNX Runtime) and the
# hand-written TensorFlow loop back to back in one run, REPS times each (alternating, so
# both see the same machine load). Prints each run, then the best img/s of each, the
# harden : TensorFlow ratio and, for harden's best run, PGD-10 time over the time of
# 10 runs of its own gradient graph on the same batches, and that graph-only rate over
# TensorFlow's (the floor ratio: what a zero-cost loop around the graph would reach).
# Usage: scripts/bench-pgd.sh [REPS] [IMAGES] [NET]     (defaults: 3, 1024, demo|wong)
# Needs the TensorFlow virtualenv (models/PROVENANCE.md); TF_PYTHON overrides its python.
#
# scripts/bench-pgd.sh --in-graph [REPS] [IMAGES] [NET]: harden alone, PGD-10 with its
# steps run three ways (examples/bench_pgd.rs --step): PGD's loop on the host (a gradient
# graph run per step, the step on the host), the step graph run step by step on host
# arrays, and the step graph bound through ONNX Runtime's IoBinding (the iterate stays
# in the session's memory); best img/s of each and the ratios to the host loop.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--in-graph" ]; then
  shift
  REPS="${1:-3}"; N="${2:-1024}"; NET="${3:-demo}"
  . scripts/bench-net.sh
  MODEL=$(bench_model "$NET")
  export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/fetch-onnxruntime.sh)}"
  cargo build --quiet --example bench_pgd
  BIN=target/debug/examples/bench_pgd
  echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
  declare -A best=([host]=0 [graph]=0 [bound]=0)
  for rep in $(seq "$REPS"); do
    for step in host graph bound; do
      r=$("$BIN" --runtime ort --images "$N" --model "$MODEL" --step "$step")
      echo "$step: $r"
      v=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["images_per_s"])' "$r")
      best[$step]=$(python3 -c "print(max(${best[$step]}, $v))")
    done
  done
  echo "best of $REPS, PGD-10 img/s: host loop ${best[host]}, step graph ${best[graph]}, bound ${best[bound]}"
  python3 -c "print('ratio to the host loop: step graph %.2fx, bound %.2fx' % (${best[graph]} / ${best[host]}, ${best[bound]} / ${best[host]}))"
  exit 0
fi
REPS="${1:-3}"
N="${2:-1024}"
NET="${3:-demo}"
. scripts/bench-net.sh
MODEL=$(bench_model "$NET")
TF_PYTHON="${TF_PYTHON:-/tmp/tfvenv/bin/python}"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/fetch-onnxruntime.sh)}"
cargo build --quiet --example bench_pgd
BIN=target/debug/examples/bench_pgd
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
h_best=0; t_best=0; g_best=0; o_best=0
for rep in $(seq "$REPS"); do
  h=$("$BIN" --runtime ort --images "$N" --model "$MODEL")
  echo "harden: $h"
  t=$(TF_CPP_MIN_LOG_LEVEL=3 "$TF_PYTHON" scripts/bench_tf.py --net "$NET" --work pgd10 --images "$N" 2>/dev/null | tail -1)
  echo "tf:     $t"
  read -r hi gi oh < <(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(r["images_per_s"], r["graph_only_images_per_s"], r["overhead_over_graph"])' "$h")
  ti=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["images_per_s"])' "$t")
  if python3 -c "import sys; sys.exit(0 if $hi > $h_best else 1)"; then
    h_best=$hi; g_best=$gi; o_best=$oh
  fi
  t_best=$(python3 -c "print(max($t_best, $ti))")
done
echo "best of $REPS: harden-ort $h_best img/s, tensorflow-handwritten $t_best img/s"
python3 -c "print('ratio harden/tf: %.2fx' % ($h_best / $t_best))"
echo "harden's best run: graph alone (10 runs of the gradient graph) $g_best img/s; PGD-10 time / graph time: $o_best"
python3 -c "print('floor ratio (graph alone / tf): %.2fx' % ($g_best / $t_best))"
