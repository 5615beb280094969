#!/usr/bin/env python3
"""Run `harden falsify` on every VNN-COMP instance of ../shared/corpus and compare with the
known answers. Usage: scripts/vnncomp-falsify.py [--timeout 20] [--only sat|unsat|all]
Prints one line per instance and a summary: sat found on known-sat instances, wrong sat
answers on known-unsat instances (must be 0), time per instance. Needs a built harden
(cargo build) and the corpus."""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "..", "shared", "corpus")
BIN = os.path.join(ROOT, "target", "debug", "harden")

ap = argparse.ArgumentParser()
ap.add_argument("--timeout", type=float, default=20.0)
ap.add_argument("--only", default="all")
ap.add_argument("--runtime", default="auto")
args = ap.parse_args()

manifest = json.load(open(os.path.join(CORPUS, "MANIFEST.json")))
rows = []
for e in manifest:
    for p in e["properties"]:
        if args.only != "all" and p["expected"] != args.only:
            continue
        t0 = time.time()
        r = subprocess.run([BIN, "falsify", os.path.join(CORPUS, e["file"]), os.path.join(CORPUS, p["vnnlib"]),
                            "--timeout", str(args.timeout), "--runtime", args.runtime],
                           capture_output=True, text=True, env=dict(os.environ, CI="1"))
        dt = time.time() - t0
        ans = r.stdout.split("\n", 1)[0] if r.returncode == 0 else "error: " + r.stderr.strip()
        rows.append((e["id"], os.path.basename(p["vnnlib"]), p["expected"], ans, dt))
        print(f"{dt:6.1f}s  expected {p['expected']:7}  got {ans:8}  {e['id']}  {os.path.basename(p['vnnlib'])}", flush=True)

sat = [r for r in rows if r[2] == "sat"]
found = [r for r in sat if r[3] == "sat"]
wrong = [r for r in rows if r[2] == "unsat" and r[3] == "sat"]
errors = [r for r in rows if r[3].startswith("error")]
print(f"\nknown-sat instances falsified: {len(found)}/{len(sat)}; sat answers on known-unsat: {len(wrong)}; errors: {len(errors)}")
if found:
    ts = sorted(r[4] for r in found)
    print(f"time per falsified instance: median {ts[len(ts)//2]:.2f}s, max {ts[-1]:.2f}s; all instances {sum(r[4] for r in rows):.0f}s")
sys.exit(1 if wrong or errors else 0)
