#!/usr/bin/env bash
# Sharded audit against one process: a `standard` audit (APGD-CE, APGD-T, Square) of N
# examples of the bundled Fashion-MNIST slice, run (a) as one process with T threads and
# (b) as S shards run at the same time, each with T/S threads, then `harden report merge`;
# prints both wall times, the merge time, the overhead per shard, and checks that the
# merged report equals the unsharded one (JSON apart from `meta`, and the Markdown).
#
#   scripts/bench-shards.sh [N=1000] [S=2] [NET=demo] [RUNTIME=ort] [EPS=0.02]
#
# On a machine with fewer cores than S*T/S... the gain is bounded by the cores: this
# measures correctness and the per-shard overhead (reading and mapping the whole data,
# opening the model and its gradient graphs, shard 0's extra sanity probes) more than
# speed. Needs a build (release, else the optimised dev build) and jq.
#
# With RAY_PYTHON=/path/to/python (a Python with `ray` installed) it also starts a local
# Ray cluster (`ray start --head --num-cpus S`), runs the same audit through
# scripts/ray-audit.py as S shards of T/S threads, stops the cluster, and checks that
# report too against the unsharded one.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-net.sh
N=${1:-1000}
S=${2:-2}
MODEL=$(bench_model "${3:-demo}")
RUNTIME=${4:-ort}
T=$(nproc)
H=${HARDEN:-target/release/harden}
[ -x "$H" ] || H=target/debug/harden  # the dev profile is optimised too
[ -x "$H" ] || { echo "build first: cargo build --release (or HARDEN=path)" >&2; exit 2; }
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
FLAGS=(audit "$MODEL" --data data/fashion-mnist-slice --limit "$N" --runtime "$RUNTIME"
       --eps "${5:-0.02}" --attacks standard --seed 1)
now() { date +%s.%N; }
export CI=1

t0=$(now)
"$H" "${FLAGS[@]}" --threads "$T" --report "$W/one" > /dev/null
t1=$(now)
per=$(( T / S > 0 ? T / S : 1 ))
for ((k = 0; k < S; k++)); do
  ( ts=$(now); "$H" "${FLAGS[@]}" --threads "$per" --shard "$k/$S" --json "$W/part$k.json" 2> /dev/null
    echo "$(echo "$(now) - $ts" | bc)" > "$W/t$k" ) &
done
wait
t2=$(now)
"$H" report merge "$W"/part*.json --report "$W/merged" > /dev/null
t3=$(now)

one=$(echo "$t1 - $t0" | bc)
shards=$(echo "$t2 - $t1" | bc)
merge=$(echo "$t3 - $t2" | bc)
printf 'standard audit of %s examples, %s, %s threads, %s\n' "$N" "$MODEL" "$T" "$RUNTIME"
printf '  one process, %s threads:          %8.2f s\n' "$T" "$one"
printf '  %s shards at once, %s thread(s) each: %8.2f s (slowest shard)\n' "$S" "$per" "$shards"
for ((k = 0; k < S; k++)); do printf '    shard %s/%s: %.2f s\n' "$k" "$S" "$(cat "$W/t$k")"; done
printf '  report merge:                    %8.2f s\n' "$merge"
printf '  sharded / one:                   %8.2fx\n' "$(echo "($shards + $merge) / $one" | bc -l)"
# Overhead: the shards' summed time over the unsharded run's, per shard.
sum=$(cat "$W"/t* | paste -sd+ | bc)
printf '  overhead per shard (sum of shard times x threads per shard / (one x threads) - 1) / S: %+.1f%%\n' \
  "$(echo "100 * (($sum * $per) / ($one * $T) - 1) / $S" | bc -l)"
same() {  # same DIR: the report in DIR equals the unsharded one (JSON apart from meta, Markdown)
  local j m
  j=$(jq -S 'del(.meta)' "$W/one/report.json" | cmp -s - <(jq -S 'del(.meta)' "$1/report.json") && echo yes || echo NO)
  m=$(cmp -s <(sed '/<!-- meta: volatile -->/,$d' "$W/one/report.md") <(sed '/<!-- meta: volatile -->/,$d' "$1/report.md") && echo yes || echo NO)
  printf 'JSON %s, Markdown %s' "$j" "$m"
  [ "$j" = yes ] && [ "$m" = yes ]
}
ok=0
printf '  merged report equals the unsharded one: %s\n' "$(same "$W/merged")"
same "$W/merged" > /dev/null || ok=1

if [ -n "${RAY_PYTHON:-}" ]; then
  RAY="$(dirname "$RAY_PYTHON")/ray"
  "$RAY" start --head --num-cpus "$S" --include-dashboard=false > "$W/ray-start.log" 2>&1
  trap '"$RAY" stop > /dev/null 2>&1; rm -rf "$W"' EXIT
  r0=$(now)
  "$RAY_PYTHON" scripts/ray-audit.py "$MODEL" --data data/fashion-mnist-slice --shards "$S" \
    --address auto --harden "$H" --work "$W/ray-work" --report "$W/ray" -- \
    --limit "$N" --runtime "$RUNTIME" --eps "${5:-0.02}" --attacks standard --seed 1 \
    --threads "$per" > /dev/null 2> "$W/ray.log"
  r1=$(now)
  "$RAY" stop > /dev/null 2>&1
  ray=$(echo "$r1 - $r0" | bc)
  printf '  Ray, local cluster of %s CPUs, %s shards (launch, tasks, gather, merge): %8.2f s\n' "$S" "$S" "$ray"
  grep -E '^shard [0-9]+/' "$W/ray.log" | sed 's/^/    /'
  printf '  Ray / one:                       %8.2fx\n' "$(echo "$ray / $one" | bc -l)"
  printf '  Ray report equals the unsharded one: %s\n' "$(same "$W/ray")"
  same "$W/ray" > /dev/null || ok=1
fi
exit $ok
