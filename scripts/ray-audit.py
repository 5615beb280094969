#!/usr/bin/env python3
"""Run one `harden audit` as N shards on a Ray cluster and merge the parts.

    scripts/ray-audit.py MODEL --data SPEC --shards N [--report DIR] [--json FILE]
        [--address auto] [--max-retries 3] [--harden PATH] [--work DIR]
        [-- AUDIT FLAGS...]

One Ray task per shard runs `harden audit MODEL --data SPEC --shard K/N --json PART
--checkpoint CK [--resume] AUDIT FLAGS` (the same flags for every shard: --eps,
--attacks, --seed, --runtime, ...). A task whose worker dies (a killed process, a lost
node) or whose harden run is killed is retried up to --max-retries times; with
--work on a filesystem the retry sees (one machine, or a shared volume), the retry
resumes from the shard's checkpoint instead of starting over. A shard that fails on
bad input (harden exits 2) is not retried. The driver gathers the parts (returned by
the tasks, so no shared filesystem is needed for them) and runs
`harden report merge PARTS --report DIR`, which checks that they belong together and
writes the report one unsharded run would; its exit code is this script's (0, 1 when a
gate failed, 2 on an error).

Needs `pip install ray` (tested with ray 2.x); harden on every node (--harden, default
`harden` on PATH, or target/release/harden, target/debug/harden beside this script).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time


def find_harden(given):
    if given:
        return os.path.abspath(given)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for sub in ("target/release/harden", "target/debug/harden"):
        p = os.path.join(root, sub)
        if os.access(p, os.X_OK):
            return p
    p = shutil.which("harden")
    if p:
        return p
    sys.exit("ray-audit: no harden binary (build it, or pass --harden PATH)")


def die_with_parent():
    """In the child: be killed when the Ray worker running it dies (Linux), so that a
    retry never runs beside an orphaned harden writing the same checkpoint."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class BadInput(Exception):
    """harden refused its input (exit 2): retrying would not help."""


class ShardFailed(Exception):
    """harden died (killed, crashed): the task is retried."""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--data", required=True)
    ap.add_argument("--shards", type=int, required=True)
    ap.add_argument("--report", help="write report.json/.md/.html into DIR")
    ap.add_argument("--json", help="write the merged report's JSON to FILE")
    ap.add_argument("--address", default=None,
                    help="Ray cluster address (auto: the running cluster; default: start a local one)")
    ap.add_argument("--max-retries", type=int, default=3)
    ap.add_argument("--harden", default=None)
    ap.add_argument("--work", default=None,
                    help="folder for the shards' checkpoints (default: a temporary folder)")
    # After `--`: flags for every shard's audit (--eps, --attacks, --seed, ...).
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    a = ap.parse_args(argv[:cut])
    flags = argv[cut + 1:]
    if a.shards < 1:
        sys.exit("ray-audit: --shards must be at least 1")
    harden = find_harden(a.harden)
    # Paths stay as given (the report shows them); every task runs in this folder (one
    # machine, or the same layout on every node).
    model, data, cwd = a.model, a.data, os.getcwd()
    work = os.path.abspath(a.work) if a.work else tempfile.mkdtemp(prefix="ray-audit-")
    os.makedirs(work, exist_ok=True)

    import ray  # imported late: --help works without it

    ray.init(address=a.address, log_to_driver=True)

    @ray.remote(max_retries=a.max_retries, retry_exceptions=[ShardFailed])
    def shard(k, n):
        part = os.path.join(work, f"part{k}.json")
        ck = os.path.join(work, f"ck{k}.jsonl")
        cmd = [harden, "audit", model, "--data", data, *flags,
               "--shard", f"{k}/{n}", "--json", part, "--checkpoint", ck]
        if os.path.exists(ck):
            cmd.append("--resume")
        t = time.time()
        p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "CI": "1"},
                           cwd=cwd, preexec_fn=die_with_parent)
        if p.returncode == 2:
            raise BadInput(f"shard {k}/{n}: {p.stderr.strip()}")
        if p.returncode != 0:
            raise ShardFailed(f"shard {k}/{n}: harden exited {p.returncode}: {p.stderr.strip()[-500:]}")
        with open(part) as f:
            text = f.read()
        return k, text, time.time() - t, "--resume" in cmd

    t0 = time.time()
    refs = [shard.remote(k, a.shards) for k in range(a.shards)]
    parts = []
    try:
        for k, text, secs, resumed in ray.get(refs):
            p = os.path.join(work, f"gathered-part{k}.json")
            with open(p, "w") as f:
                f.write(text)
            parts.append(p)
            print(f"shard {k}/{a.shards}: {secs:.1f} s{' (resumed from its checkpoint)' if resumed else ''}",
                  file=sys.stderr)
    except ray.exceptions.RayTaskError as e:
        sys.exit(f"ray-audit: {e.cause if hasattr(e, 'cause') else e}")
    print(f"ray-audit: {a.shards} shards in {time.time() - t0:.1f} s", file=sys.stderr)
    cmd = [harden, "report", "merge", *parts]
    if a.report:
        cmd += ["--report", a.report]
    if a.json:
        cmd += ["--json", a.json]
    sys.exit(subprocess.run(cmd).returncode)


if __name__ == "__main__":
    main()
