#!/usr/bin/env bash
# The side-by-side benchmark: for each network, each work item run by harden on ONNX
# Runtime and on tract, by the same network in TensorFlow with hand-written tf.function
# loops (scripts/bench_tf.py) and by CleverHans, Foolbox and IBM ART on TensorFlow 2
# (scripts/bench_peers.py), every (tool, work) in its own process with its peak RSS
# (/usr/bin/time -f %M); then harden audit's peak RSS against the number of images.
# Prints a Markdown table (images/s, ratio to harden on ONNX Runtime, peak RSS).
#
# Usage: scripts/bench.sh [--net demo|wong|both] [--quick] [--tools LIST] [--work LIST]
#   --net    demo (models/fmnist_cnn.onnx), wong (models/wong_cnn.onnx) or both (default)
#   --quick  a smoke run at tiny sizes: 256 attacked images, 2,000 training images,
#            100 audited images, one pass for the peers (default: 1,024, 60,000, 1,000, best of 3)
#   --tools  subset of harden-ort,harden-tract,tensorflow-handwritten,cleverhans,foolbox,art
#   --work   subset of pgd10,pgd10-stop,train-pgd7,train-fast,standard,memory
#   --train-images N, --audit-images N   override the training epoch's and the
#            `standard` audit's sizes (images/s is what the table compares)
# Work items (Linf, eps 0.1, batch 128, 2 threads, Fashion-MNIST):
#   pgd10       PGD-10 (step 2.5 eps / 10, random start) on test images, every step on
#               every image (the work of a plain PGD loop, as the other tools run it)
#   pgd10-stop  the same attack as harden's audits run it: an image leaves the batch once
#               broken (same robust count; harden only, compare with the tools' pgd10)
#   train-pgd7  one epoch of Madry PGD-7 adversarial training (Adam 1e-3) on training images
#   train-fast  one epoch of FGSM-RS "fast" training (Wong et al. 2020)
#   standard    the `standard` audit: APGD-CE, APGD-T (9 targets), Square (5,000 queries)
#   memory      harden audit (ONNX Runtime) peak RSS on 128 images (the model and one
#               batch), 1,000, 10,000 and 60,000: clean, FGSM, and `standard` (up to 10,000;
#               1,000 with --quick)
# Needs: the TensorFlow virtualenv of models/PROVENANCE.md (TF_PYTHON, default
# /tmp/tfvenv/bin/python) and the peers' virtualenv from scripts/setup-peers.sh
# (PEER_PYTHON, default /tmp/peervenv/bin/python); a missing one is skipped with a note.
# Raw results (one JSON line per run, the commands' stderr) go to target/bench/.
# Not part of CI. The full run (both networks) should take about 1 to 1.5 hours on 2 idle
# cores, extrapolated from --quick runs; PGD-7 training on tract and with ART dominates.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-net.sh

NETS="demo wong"
QUICK=0
TRAIN_OVERRIDE=""
AUDIT_OVERRIDE=""
TOOLS="harden-ort,harden-tract,tensorflow-handwritten,cleverhans,foolbox,art"
WORK="pgd10,pgd10-stop,train-pgd7,train-fast,standard,memory"
while [ $# -gt 0 ]; do
  case "$1" in
    --net) case "${2:-}" in demo|wong) NETS="$2" ;; both) NETS="demo wong" ;;
             *) echo "bench.sh: --net wants demo, wong or both" >&2; exit 2 ;; esac; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --tools) TOOLS="${2:?--tools wants a list}"; shift 2 ;;
    --work) WORK="${2:?--work wants a list}"; shift 2 ;;
    --train-images) TRAIN_OVERRIDE="${2:?--train-images wants a number}"; shift 2 ;;
    --audit-images) AUDIT_OVERRIDE="${2:?--audit-images wants a number}"; shift 2 ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
for t in ${TOOLS//,/ }; do
  case "$t" in harden-ort|harden-tract|tensorflow-handwritten|cleverhans|foolbox|art) ;;
    *) echo "bench.sh: --tools: unknown tool '$t'" >&2; exit 2 ;; esac
done
for w in ${WORK//,/ }; do
  case "$w" in pgd10|pgd10-stop|train-pgd7|train-fast|standard|memory) ;;
    *) echo "bench.sh: --work: unknown work item '$w'" >&2; exit 2 ;; esac
done
if [ "$QUICK" = 1 ]; then
  PGD_N=256; TRAIN_N=2000; AUDIT_N=100; REPS=1
else
  PGD_N=1024; TRAIN_N=60000; AUDIT_N=1000; REPS=3
fi
TRAIN_N="${TRAIN_OVERRIDE:-$TRAIN_N}"
AUDIT_N="${AUDIT_OVERRIDE:-$AUDIT_N}"
[ -x /usr/bin/time ] || { echo "bench.sh: needs /usr/bin/time (apt-get install time)" >&2; exit 2; }
TF_PYTHON="${TF_PYTHON:-/tmp/tfvenv/bin/python}"
PEER_PYTHON="${PEER_PYTHON:-/tmp/peervenv/bin/python}"
export TF_CPP_MIN_LOG_LEVEL=3
ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/fetch-onnxruntime.sh)}" || {
  echo "bench.sh: could not fetch ONNX Runtime (scripts/fetch-onnxruntime.sh)" >&2; exit 2; }
export ORT_DYLIB_PATH
cargo build --quiet --bin harden --example bench_pgd --example bench_train || exit 2
HARDEN=target/debug/harden
EX=target/debug/examples

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT="target/bench/$STAMP"
mkdir -p "$OUT"
ROWS="$OUT/rows.jsonl"
: >"$ROWS"
HEADER="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB; $(date -u '+%F %H:%M UTC'); harden $(git rev-parse --short HEAD 2>/dev/null || echo '?'); load at start $(cut -d' ' -f1-3 /proc/loadavg)"
echo "machine: $HEADER" >&2
echo "sizes: pgd10 $PGD_N images, training $TRAIN_N images, standard audit $AUDIT_N images; raw results in $OUT" >&2

has() { case ",$1," in *",$2,"*) return 0 ;; *) return 1 ;; esac; }

# record NET TOOL WORK KIND NOTE [STDOUT_FILE RSS_KB]: one JSON line into $ROWS. KIND: json
# (the last JSON line of stdout) or audit (stdout is harden audit's whole JSON report).
record() {
  python3 - "$@" >>"$ROWS" <<'PY'
import json, sys
net, tool, work, kind, note = sys.argv[1:6]
out, rss = (sys.argv[6:8] + ["", ""])[:2]
row = {"net": net, "tool": tool, "work": work, "images_per_s": None, "images": None,
       "peak_rss_mb": None, "note": note or None}
if out:
    text = open(out).read()
    try:
        if kind == "audit":
            r = json.loads(text)
            row["images_per_s"] = r["meta"]["audits"][0]["examples_per_second"]
            row["images"] = r["audit"]["data"]["examples"]
            res = (r["audit"].get("robust") or {}).get("results") or []
            if res:
                row["robust"] = res[0]["robust"]
        else:
            r = json.loads([l for l in text.splitlines() if l.startswith("{")][-1])
            row["images_per_s"] = r.get("images_per_s")
            row["images"] = r.get("images")
            if r.get("note"):
                row["note"] = r["note"]
            if "not_broken" in r:
                row["robust"] = r["not_broken"]
            if "robust_after" in r:
                row["robust"] = r["robust_after"]["square"]
    except (ValueError, KeyError, IndexError) as e:
        row["note"] = ((row["note"] or "") + f" (no result parsed: {e})").strip()
    if rss and row["images_per_s"] is not None:
        row["peak_rss_mb"] = round(int(rss) / 1024, 1)
print(json.dumps(row))
PY
}

# measure NET TOOL WORK KIND NOTE CMD...: runs CMD under /usr/bin/time, records the result.
measure() {
  local net=$1 tool=$2 work=$3 kind=$4 note=$5
  shift 5
  local base="$OUT/$net.$tool.$work"
  echo "  $net $tool $work ..." >&2
  if /usr/bin/time -f %M -o "$base.rss" "$@" >"$base.out" 2>"$base.err"; then
    record "$net" "$tool" "$work" "$kind" "$note" "$base.out" "$(tail -1 "$base.rss")"
  else
    local why
    why=$(grep -v '^[[:space:]]*$' "$base.err" | grep -v '^Command exited' | tail -1 | cut -c1-200)
    record "$net" "$tool" "$work" "$kind" "failed: ${why:-no message} (see $base.err)"
  fi
}

skip() { record "$1" "$2" "$3" json "$4"; }

for net in $NETS; do
  MODEL=$(bench_model "$net")
  for work in pgd10 pgd10-stop train-pgd7 train-fast standard; do
    has "$WORK" "$work" || continue
    for rt in ort tract; do
      has "$TOOLS" "harden-$rt" || continue
      case "$work" in
        pgd10) measure "$net" "harden-$rt" "$work" json "" "$EX/bench_pgd" --model "$MODEL" \
                 --runtime "$rt" --images "$PGD_N" ;;
        pgd10-stop) measure "$net" "harden-$rt" "$work" json "" "$EX/bench_pgd" --model "$MODEL" \
                 --runtime "$rt" --images "$PGD_N" --stop-when-broken ;;
        train-pgd7|train-fast)
          measure "$net" "harden-$rt" "$work" json "" "$EX/bench_train" --model "$MODEL" \
            --runtime "$rt" --images "$TRAIN_N" --method "$([ "$work" = train-fast ] && echo fast || echo pgd)" ;;
        standard) measure "$net" "harden-$rt" "$work" audit "" "$HARDEN" audit "$MODEL" \
                    --data fashion-mnist:test --limit "$AUDIT_N" --eps 0.1 --attacks standard \
                    --no-sanity-checks --runtime "$rt" --threads 2 --seed 0 --json - ;;
      esac
    done
    # The other tools' PGD has no such mode: their pgd10 rows are the comparison.
    [ "$work" = pgd10-stop ] && continue
    if has "$TOOLS" tensorflow-handwritten; then
      if [ ! -x "$TF_PYTHON" ]; then
        skip "$net" tensorflow-handwritten "$work" "skipped: no TensorFlow virtualenv at $TF_PYTHON (models/PROVENANCE.md)"
      elif [ "$work" = standard ]; then
        skip "$net" tensorflow-handwritten "$work" "not written by hand (bench_tf.py has PGD and training loops only)"
      else
        measure "$net" tensorflow-handwritten "$work" json "" "$TF_PYTHON" scripts/bench_tf.py \
          --net "$net" --work "$work" --images "$PGD_N" --train-images "$TRAIN_N"
      fi
    fi
    for peer in cleverhans foolbox art; do
      has "$TOOLS" "$peer" || continue
      if [ ! -x "$PEER_PYTHON" ]; then
        skip "$net" "$peer" "$work" "skipped: no peers' virtualenv at $PEER_PYTHON (scripts/setup-peers.sh)"
      else
        measure "$net" "$peer" "$work" json "" "$PEER_PYTHON" scripts/bench_peers.py --one "$peer:$work" \
          --net "$net" --images "$PGD_N" --train-images "$TRAIN_N" --audit-images "$AUDIT_N" --reps "$REPS"
      fi
    done
  done
  if has "$WORK" memory && has "$TOOLS" harden-ort; then
    for n in 128 1000 10000 60000; do
      split=$([ "$n" = 60000 ] && echo train || echo test)
      measure "$net" harden-ort "memory-clean-$n" audit "clean audit, fashion-mnist:$split" \
        "$HARDEN" audit "$MODEL" --data "fashion-mnist:$split" --limit "$n" --runtime ort \
        --threads 2 --json -
    done
    for n in 128 1000 10000; do
      measure "$net" harden-ort "memory-fgsm-$n" audit "FGSM audit (eps 0.1), fashion-mnist:test" \
        "$HARDEN" audit "$MODEL" --data fashion-mnist:test --limit "$n" --eps 0.1 --attacks fgsm \
        --runtime ort --threads 2 --seed 0 --json -
    done
    for n in 128 1000 $([ "$QUICK" = 1 ] || echo 10000); do
      measure "$net" harden-ort "memory-standard-$n" audit "standard audit (eps 0.1), fashion-mnist:test" \
        "$HARDEN" audit "$MODEL" --data fashion-mnist:test --limit "$n" --eps 0.1 --attacks standard \
        --no-sanity-checks --runtime ort --threads 2 --seed 0 --json -
    done
  fi
done

python3 - "$ROWS" "$HEADER" "$QUICK" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
header, quick = sys.argv[2], sys.argv[3] == "1"
print(f"Machine: {header}{' (--quick: smoke-run sizes, not for comparison)' if quick else ''}\n")
print("ratio = the tool's images/s ÷ harden on ONNX Runtime's images/s for the same network and "
      "work (below 1: slower than harden-ort). Peak RSS: the process's maximum resident set "
      "(/usr/bin/time %M), each (tool, work) in its own process.\n")
print("| net | work | tool | images | images/s | ratio to harden-ort | peak RSS MB | note |")
print("|---|---|---|---|---|---|---|---|")
base = {(r["net"], r["work"]): r["images_per_s"] for r in rows if r["tool"] == "harden-ort"}
fmt = lambda v, f: "" if v is None else f.format(v)
for r in rows:
    if r["work"].startswith("memory"):
        continue
    b = base.get((r["net"], r["work"]))
    ratio = r["images_per_s"] / b if (b and r["images_per_s"]) else None
    note = r.get("note") or ""
    if "robust" in r and r["work"] != "train-pgd7":
        note = (note + "; " if note else "") + f"robust left: {r['robust']}"
    print(f"| {r['net']} | {r['work']} | {r['tool']} | {fmt(r['images'], '{:,}')} | "
          f"{fmt(r['images_per_s'], '{:,.1f}')} | {fmt(ratio, '{:.2f}x')} | "
          f"{fmt(r['peak_rss_mb'], '{:,.0f}')} | {note} |")
mem = [r for r in rows if r["work"].startswith("memory")]
if mem:
    print("\nharden audit (ONNX Runtime) peak RSS against the number of images audited "
          "(data streamed; 128 images = the model and one batch):\n")
    print("| net | audit | images | peak RSS MB | ÷ one-batch run | images/s |")
    print("|---|---|---|---|---|---|")
    one = {(r["net"], r["work"].rsplit("-", 1)[0]): r["peak_rss_mb"] for r in mem if r["images"] == 128}
    for r in mem:
        kind = r["work"].rsplit("-", 1)[0]
        o = one.get((r["net"], kind))
        rel = r["peak_rss_mb"] / o if (o and r["peak_rss_mb"]) else None
        print(f"| {r['net']} | {kind.split('-', 1)[1]} | {r['images']:,} | {fmt(r['peak_rss_mb'], '{:,.1f}')} | "
              f"{fmt(rel, '{:.2f}x')} | {fmt(r['images_per_s'], '{:,.0f}')} |")
PY
