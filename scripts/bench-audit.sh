#!/usr/bin/env bash
# Clean-audit throughput of the demo model on both runtimes, side by side in one run.
# Usage: scripts/bench-audit.sh [N_IMAGES]   (default: the 10,000 Fashion-MNIST test images)
# Prints images/s per runtime (best of 3) and the ONNX Runtime : tract ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-10000}"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/fetch-onnxruntime.sh)}"
cargo build --quiet --bin harden
BIN=target/debug/harden
MODEL=models/fmnist_cnn.onnx
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)"
declare -A best
for rt in ort tract; do
  for threads in 2; do
    b=0
    for rep in 1 2 3; do
      json=$("$BIN" audit "$MODEL" --data fashion-mnist:test --limit "$N" --runtime "$rt" --threads "$threads" --json -)
      ips=$(python3 -c 'import json,sys; r=json.load(sys.stdin); print(round(r["meta"]["audits"][0]["examples_per_second"],1))' <<<"$json")
      b=$(python3 -c "print(max($b, $ips))")
    done
    best[$rt]=$b
    echo "harden audit ($rt, $threads threads, batch 128): $b images/s over $N images (best of 3, includes model load)"
  done
done
python3 -c "print('ratio onnxruntime/tract: %.2f' % (${best[ort]} / ${best[tract]}))"
