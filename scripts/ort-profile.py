#!/usr/bin/env python3
"""Sums ONNX Runtime's per-node profiles (written by any harden command or example run with
HARDEN_ORT_PROFILE=PREFIX; one JSON file per session) into where the time goes.

    scripts/ort-profile.py PREFIX-*.json [--top 15]

Per session file: its runs and their total time, then the op types by total kernel time
(share, calls, mean, provider) and the slowest nodes with their input shapes. Sessions
are listed by total time, the costliest first (in a hardening run: the weight-gradient
graph, the input-gradient graph, the classifier). Standard library only.
"""

import argparse
import collections
import json
import os
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    sessions = []
    for path in a.files:
        try:
            with open(path) as f:
                events = json.load(f)
        except (OSError, ValueError) as e:
            sys.exit(f"ort-profile: {path}: {e}")
        runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
        nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
        sessions.append((sum(e["dur"] for e in runs), path, runs, nodes))
    for total, path, runs, nodes in sorted(sessions, key=lambda s: -s[0]):
        if not runs:
            continue
        kernel = sum(e["dur"] for e in nodes) or 1
        print(f"\n{os.path.basename(path)}: {len(runs)} runs, {total / 1e3:.1f} ms in runs "
              f"({total / len(runs) / 1e3:.2f} ms a run), {kernel / 1e3:.1f} ms in kernels")
        by_op = collections.defaultdict(lambda: [0, 0, set()])
        for e in nodes:
            args = e.get("args", {})
            s = by_op[args.get("op_name", "?")]
            s[0] += e["dur"]
            s[1] += 1
            s[2].add(args.get("provider", "?").replace("ExecutionProvider", ""))
        print(f"  {'op':<24}{'share':>7}{'ms':>10}{'calls':>8}{'us/call':>10}  provider")
        for op, (dur, calls, prov) in sorted(by_op.items(), key=lambda kv: -kv[1][0])[: a.top]:
            print(f"  {op:<24}{100 * dur / kernel:>6.1f}%{dur / 1e3:>10.1f}{calls:>8}{dur / calls:>10.1f}  {','.join(sorted(prov))}")
        by_node = collections.defaultdict(lambda: [0, 0, "", ""])
        for e in nodes:
            args = e.get("args", {})
            s = by_node[e["name"][: -len("_kernel_time")]]
            s[0] += e["dur"]
            s[1] += 1
            s[2] = args.get("op_name", "?")
            s[3] = " ".join(str(list(t.values())[0]) for t in args.get("input_type_shape", []))
        print(f"  slowest nodes:")
        for name, (dur, calls, op, shapes) in sorted(by_node.items(), key=lambda kv: -kv[1][0])[: a.top]:
            print(f"  {100 * dur / kernel:>6.1f}% {dur / calls:>9.1f} us  {op:<16} {name[:60]:<60} {shapes[:80]}")


if __name__ == "__main__":
    main()
