#!/usr/bin/env bash
# One epoch of adversarial training of the demo model on Fashion-MNIST training images:
# harden (ONNX Runtime, `examples/bench_train.rs`) and the hand-written TensorFlow loop
# (`scripts/bench_tf.py`), back to back in one run, for PGD-7 (Madry) and FGSM-RS (fast).
# Prints each run and the harden : TensorFlow ratio per method.
# Usage: scripts/bench-train.sh [IMAGES] [METHODS]     (defaults: 60000, pgd,fast)
# Needs the TensorFlow virtualenv (models/PROVENANCE.md); TF_PYTHON overrides its python.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-60000}"
METHODS="${2:-pgd,fast}"
TF_PYTHON="${TF_PYTHON:-/tmp/tfvenv/bin/python}"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/fetch-onnxruntime.sh)}"
cargo build --quiet --example bench_train
BIN=target/debug/examples/bench_train
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
for m in ${METHODS//,/ }; do
  work=$([ "$m" = fast ] && echo train-fast || echo train-pgd7)
  h=$("$BIN" --runtime ort --images "$N" --method "$m")
  echo "harden: $h"
  t=$(TF_CPP_MIN_LOG_LEVEL=3 "$TF_PYTHON" scripts/bench_tf.py --work "$work" --train-images "$N" 2>/dev/null | tail -1)
  echo "tf:     $t"
  python3 -c 'import json,sys; h=json.loads(sys.argv[1]); t=json.loads(sys.argv[2]); print("%s: harden %.1f img/s, tensorflow %.1f img/s, ratio %.2fx" % (sys.argv[3], h["images_per_s"], t["images_per_s"], h["images_per_s"] / t["images_per_s"]))' "$h" "$t" "$work"
done
