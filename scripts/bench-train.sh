#!/usr/bin/env bash
# One epoch of adversarial training on Fashion-MNIST training images: harden (ONNX
# Runtime, `examples/bench_train.rs`) and the hand-written TensorFlow loop
# (`scripts/bench_tf.py`), back to back in one run, REPS times each (alternating, so both
# see the same machine load), for PGD-7 (Madry) and FGSM-RS (fast). Prints each run, then
# per method the best img/s of each, the harden : TensorFlow ratio, and harden's floor:
# the same epoch's gradient-graph runs alone (no projection, no optimiser step) over
# TensorFlow, the most a faster loop around the graphs could reach.
# Usage: scripts/bench-train.sh [IMAGES] [METHODS] [NET] [REPS]
#        (defaults: 60000, pgd,fast, demo|wong, 1)
# Needs the TensorFlow virtualenv (models/PROVENANCE.md); TF_PYTHON overrides its python.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-60000}"
METHODS="${2:-pgd,fast}"
NET="${3:-demo}"
REPS="${4:-1}"
. scripts/bench-net.sh
MODEL=$(bench_model "$NET")
TF_PYTHON="${TF_PYTHON:-/tmp/tfvenv/bin/python}"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/fetch-onnxruntime.sh)}"
cargo build --quiet --example bench_train
BIN=target/debug/examples/bench_train
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
for m in ${METHODS//,/ }; do
  work=$([ "$m" = fast ] && echo train-fast || echo train-pgd7)
  h_best=0; g_best=0; t_best=0
  for rep in $(seq "$REPS"); do
    h=$("$BIN" --runtime ort --images "$N" --method "$m" --model "$MODEL" --floor)
    echo "harden: $h"
    t=$(TF_CPP_MIN_LOG_LEVEL=3 "$TF_PYTHON" scripts/bench_tf.py --net "$NET" --work "$work" --train-images "$N" 2>/dev/null | tail -1)
    echo "tf:     $t"
    read -r hi gi ti < <(python3 -c 'import json,sys; h=json.loads(sys.argv[1]); t=json.loads(sys.argv[2]); print(h["images_per_s"], h["graph_only_images_per_s"], t["images_per_s"])' "$h" "$t")
    read -r h_best g_best t_best < <(python3 -c "print(max($h_best, $hi), max($g_best, $gi), max($t_best, $ti))")
  done
  python3 -c 'import sys; h, g, t = map(float, sys.argv[1:4]); print("%s %s, best of %s: harden %.1f img/s, tensorflow %.1f img/s, ratio %.2fx; graphs alone %.1f img/s, floor ratio %.2fx" % (sys.argv[4], sys.argv[5], sys.argv[6], h, t, h / t, g, g / t))' "$h_best" "$g_best" "$t_best" "$NET" "$work" "$REPS"
done
