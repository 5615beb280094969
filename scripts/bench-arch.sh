#!/usr/bin/env bash
# Full-size classifiers (224x224, random weights, batch 16): forward, input-gradient and
# weight-gradient throughput (images/s) and peak RSS of harden on ONNX Runtime and on
# tract (examples/bench_arch.rs) against PyTorch CPU eager (scripts/bench_arch_torch.py),
# same threads, in one run. Each (tool, architecture, work) runs in its own process, so
# its peak RSS is its own. Exports go to $ARCH_DIR (default /tmp/arch), never committed.
# Prints each result, then a table, then all results as one JSON array (last line).
# Usage: scripts/bench-arch.sh [THREADS] [REPS] [ARCHS] [RUNTIMES]
#   defaults: 2, 3, "resnet50 mobilenet_v3_large efficientnet_b0 convnext_tiny vit_b_16",
#   "ort tract"; EXPORTER=legacy|dynamo (default legacy), BATCH (default 16),
#   WORKS (default "forward input weight": which of the three to run), SPLIT (parts:
#   Split's single-threaded parts side by side, the default; whole: one session with
#   THREADS intra-op threads on the whole batch),
#   PYTHON (default /work/pyenv/bin/python: torch, torchvision, onnx, onnxscript).
# A harden run that fails (an op without a rule, say) is reported with its error and
# the table shows "-".
set -uo pipefail
cd "$(dirname "$0")/.."
THREADS="${1:-2}"
REPS="${2:-3}"
ARCHS="${3:-resnet50 mobilenet_v3_large efficientnet_b0 convnext_tiny vit_b_16}"
RUNTIMES="${4:-ort tract}"
BATCH="${BATCH:-16}"
WORKS="${WORKS:-forward input weight}"
SPLIT="${SPLIT:-parts}"
EXPORTER="${EXPORTER:-legacy}"
ARCH_DIR="${ARCH_DIR:-/tmp/arch}"
PYTHON="${PYTHON:-/work/pyenv/bin/python}"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/fetch-onnxruntime.sh)}"
cargo build --quiet --example bench_arch || exit 2
BIN=target/debug/examples/bench_arch
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg); threads $THREADS, batch $BATCH, reps $REPS, exporter $EXPORTER, split $SPLIT"
RESULTS=$(mktemp)
for arch in $ARCHS; do
  model="$ARCH_DIR/$arch.$EXPORTER.onnx"
  if [ ! -f "$model" ]; then
    mkdir -p "$ARCH_DIR"
    "$PYTHON" scripts/bench_arch_torch.py export "$arch" "$ARCH_DIR/tmp.$EXPORTER" --exporter "$EXPORTER" >/dev/null 2>"$ARCH_DIR/export.log" \
      && mv "$ARCH_DIR/tmp.$EXPORTER/$arch.onnx" "$model" \
      || { echo "export of $arch failed: $(tail -1 "$ARCH_DIR/export.log")"; continue; }
  fi
  for work in $WORKS; do
    line=$("$PYTHON" scripts/bench_arch_torch.py bench "$arch" --threads "$THREADS" --batch "$BATCH" --reps "$REPS" --work "$work" 2>/dev/null | tail -1)
    echo "$line" | tee -a "$RESULTS"
    for rt in $RUNTIMES; do
      err=$(mktemp)
      if line=$("$BIN" --model "$model" --runtime "$rt" --threads "$THREADS" --batch "$BATCH" --reps "$REPS" --work "$work" --split "$SPLIT" 2>"$err"); then
        echo "$line" | sed "s/\"model\": \"[^\"]*\"/\"model\": \"$arch\"/" | tee -a "$RESULTS"
      else
        msg=$(grep -m1 '^Error' "$err" || grep -v '^\s*$' "$err" | tail -1)
        echo "harden-$rt $arch $work failed: $msg"
        python3 -c 'import json,sys; print(json.dumps({"tool": "harden-" + {"ort": "onnxruntime"}.get(sys.argv[1], sys.argv[1]), "model": sys.argv[2], "work": sys.argv[3], "error": sys.argv[4]}))' "$rt" "$arch" "$work" "$msg" >> "$RESULTS"
      fi
      rm -f "$err"
    done
  done
done
python3 - "$RESULTS" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
tools = []
for r in rows:
    t = r["tool"].split("-")[0] + "-" + r["tool"].split("-")[1] if r["tool"].startswith("harden") else "pytorch"
    r["_tool"] = t
    if t not in tools:
        tools.append(t)
archs = list(dict.fromkeys(r["model"] for r in rows))
print()
head = f"{'model':<20}{'work':<9}" + "".join(f"{t + ' img/s':>26}{'RSS MiB':>9}" for t in tools)
print(head)
for a in archs:
    for w in ("forward", "input", "weight"):
        cells = []
        for t in tools:
            r = next((r for r in rows if r["model"] == a and r["work"] == w and r["_tool"] == t), None)
            if r is None or "error" in r:
                cells.append(f"{'-':>26}{'-':>9}")
            else:
                cells.append(f"{r['images_per_s']:>26.2f}{r.get('peak_rss_mib', 0):>9.0f}")
        print(f"{a:<20}{w:<9}" + "".join(cells))
for r in rows:
    r.pop("_tool")
print(json.dumps(rows))
EOF
rm -f "$RESULTS"
