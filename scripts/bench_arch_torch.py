#!/usr/bin/env python3
"""PyTorch (CPU, eager) side of scripts/bench-arch.sh, and the exports harden's side runs.

    bench_arch_torch.py export ARCH DIR [--exporter legacy|dynamo]
        writes DIR/ARCH.onnx: torchvision ARCH with random weights (seed 0), eval mode,
        1000 classes, 3x224x224 input, dynamic batch, weights inlined.
    bench_arch_torch.py bench ARCH [--threads 2] [--batch 16] [--reps 3] [--work ...]
        one JSON line per work, like examples/bench_arch.rs: forward (no_grad), input
        gradient (d sum(CE) / dx, weights frozen) and weight gradient (d sum(CE) / d
        every parameter, input not differentiated), all in eval mode (BatchNorm in
        inference, as harden's graphs), median of REPS timed runs after one warm-up; and
        the process's peak RSS.

ARCH: resnet50, mobilenet_v3_large, efficientnet_b0, convnext_tiny, vit_b_16.
"""

import argparse
import json
import os
import resource
import statistics
import time

ARCHS = ("resnet50", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny", "vit_b_16")


def build(arch):
    import torch
    import torchvision.models as tvm

    torch.manual_seed(0)
    return getattr(tvm, arch)(weights=None, num_classes=1000).eval()


def export(arch, out_dir, exporter):
    import torch
    import onnx

    m = build(arch)
    x = torch.rand(2, 3, 224, 224)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{arch}.onnx")
    if exporter == "legacy":
        torch.onnx.export(
            m, (x,), path, dynamo=False, opset_version=17, input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    else:
        torch.onnx.export(
            m, (x,), path, dynamo=True, external_data=False, input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
        )
    # One file (the largest here, ViT-B/16, is about 350 MB, under protobuf's 2 GB).
    onnx.save(onnx.load(path), path)
    for f in os.listdir(out_dir):
        if f.startswith(f"{arch}.onnx") and f.endswith(".data"):
            os.remove(os.path.join(out_dir, f))
    print(path)


def bench(arch, threads, batch, reps, works):
    import torch

    torch.set_num_threads(threads)
    m = build(arch)
    x0 = torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    y = torch.arange(batch) % 1000
    ce = torch.nn.functional.cross_entropy

    def forward():
        with torch.no_grad():
            return m(x0)

    def input_grad():
        for p in m.parameters():
            p.requires_grad_(False)
        x = x0.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(ce(m(x), y, reduction="sum"), x)
        return g

    def weight_grad():
        for p in m.parameters():
            p.requires_grad_(True)
            p.grad = None
        ce(m(x0), y, reduction="sum").backward()

    fns = {"forward": forward, "input": input_grad, "weight": weight_grad}
    for work in works:
        times = []
        for rep in range(reps + 1):
            t = time.perf_counter()
            fns[work]()
            if rep > 0:
                times.append(time.perf_counter() - t)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({
            "tool": f"pytorch-{torch.__version__}", "model": arch, "work": work,
            "batch": batch, "threads": threads,
            "images_per_s": round(batch / statistics.median(times), 2),
            "peak_rss_mib": round(rss),
        }), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cmd", choices=("export", "bench"))
    ap.add_argument("arch", choices=ARCHS)
    ap.add_argument("dir", nargs="?", default="/tmp/arch")
    ap.add_argument("--exporter", choices=("legacy", "dynamo"), default="legacy")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--work", default="forward,input,weight")
    a = ap.parse_args()
    if a.cmd == "export":
        export(a.arch, a.dir, a.exporter)
    else:
        bench(a.arch, a.threads, a.batch, a.reps, a.work.split(","))


if __name__ == "__main__":
    main()
