#!/usr/bin/env python3
"""PyTorch's side of scripts/gpu-bench.sh: a hand-written loop on a PreActResNet-18
(Wong et al., "Fast is better than free", 2020) on random CIFAR-shaped data.

  gpu_bench_torch.py export OUT.onnx [--levels 256]
                                         the network (seeded weights, eval-mode
                                         BatchNormalization) as ONNX, batch axis free;
                                         with --levels, each weight tensor rounded to that
                                         many levels (same speed, a file xz shrinks ~4x)
  gpu_bench_torch.py bench --work pgd|fast|pgd-at [--precision fp32|bf16] [--compile]
                                         [--images N] [--batch 512]

`bench` prints one JSON line: images per second and peak GPU memory (allocated by
PyTorch's caching allocator). pgd: PGD-10 Linf (eps 8/255, step 2/255, random start) on
10,000 images, the network in eval mode. fast: one Fast-AT epoch (FGSM from a random start,
step 10/255), pgd-at: one PGD-7 training epoch (step 2/255), 50,000 images, SGD with
momentum, the network in train mode as in the papers' code. The data lie on the GPU (a
throughput figure: no loader). One warm-up batch first (not timed); cudnn.benchmark on.
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class PreActBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = (
            nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None
        )

    def forward(self, x):
        out = F.relu(self.bn1(x))
        short = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + short


class PreActResNet18(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        layers, cin = [], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers += [PreActBlock(cin, cout, stride), PreActBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, classes)

    def forward(self, x):
        out = self.layers(self.conv1(x))
        out = F.relu(self.bn(out))
        out = F.avg_pool2d(out, 4)
        return self.linear(torch.flatten(out, 1))


def export(path, levels=0):
    torch.manual_seed(0)
    net = PreActResNet18().eval()
    # BatchNormalization as after training: statistics and affine parameters of their own
    # (fresh ones are all 0s and 1s, which the exporter shares through Identity nodes).
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.8, 1.2)
                m.bias.normal_(0, 0.05)
    if levels:
        with torch.no_grad():
            for p in net.parameters():
                scale = p.abs().max().clamp_min(1e-12) / (levels // 2 - 1)
                p.copy_(torch.round(p / scale) * scale)
    x = torch.rand(1, 3, 32, 32)
    kw = dict(
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        do_constant_folding=True,
    )
    try:
        torch.onnx.export(net, (x,), path, dynamo=False, **kw)
    except TypeError:  # older PyTorch: no `dynamo` argument
        torch.onnx.export(net, (x,), path, **kw)
    print(path)


def bench(a):
    # GPU_BENCH_DEVICE=cpu: a smoke test of the loop where there is no GPU.
    dev = torch.device(os.environ.get("GPU_BENCH_DEVICE", "cuda"))
    cuda = dev.type == "cuda"
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    net = PreActResNet18().to(dev)
    images = a.images or (10000 if a.work == "pgd" else 50000)
    x_all = torch.rand(images, 3, 32, 32, device=dev)
    y_all = torch.randint(0, 10, (images,), device=dev)
    eps, bf16 = 8 / 255, a.precision == "bf16"
    fwd = torch.compile(net) if a.compile else net

    def loss_of(x, y):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            return F.cross_entropy(fwd(x), y)

    def attack(x, y, steps, alpha):
        delta = torch.empty_like(x).uniform_(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
        for _ in range(steps):
            delta.requires_grad_(True)
            (g,) = torch.autograd.grad(loss_of(x + delta, y), delta)
            delta = (delta.detach() + alpha * g.sign()).clamp(-eps, eps)
            delta = (x + delta).clamp(0, 1) - x
        return (x + delta).detach()

    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step(x, y):
        if a.work == "pgd":
            return attack(x, y, 10, 2 / 255)
        x_adv = attack(x, y, 1, 10 / 255) if a.work == "fast" else attack(x, y, 7, 2 / 255)
        opt.zero_grad(set_to_none=True)
        loss_of(x_adv, y).backward()
        opt.step()
        return x_adv

    net.train(a.work != "pgd")
    if a.work == "pgd":
        for p in net.parameters():
            p.requires_grad_(False)
    b = a.batch
    step(x_all[:b], y_all[:b])  # warm-up
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    n = images if a.work == "pgd" else (images // b) * b
    t0 = time.perf_counter()
    for i in range(0, n, b):
        step(x_all[i : i + b], y_all[i : i + b])
    if cuda:
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "tool": "torch-" + a.precision + ("-compile" if a.compile else ""),
                "work": a.work,
                "images": n,
                "batch": b,
                "seconds": round(secs, 3),
                "images_per_s": round(n / secs, 1),
                "peak_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else 0,
                "gpu": torch.cuda.get_device_name(0) if cuda else "cpu",
                "torch": torch.__version__,
            }
        )
    )


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("out")
    e.add_argument("--levels", type=int, default=0)
    b = sub.add_parser("bench")
    b.add_argument("--work", choices=["pgd", "fast", "pgd-at"], default="pgd")
    b.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    b.add_argument("--compile", action="store_true")
    b.add_argument("--images", type=int, default=0)
    b.add_argument("--batch", type=int, default=512)
    a = p.parse_args()
    if a.cmd == "export":
        export(a.out, a.levels)
    else:
        bench(a)


if __name__ == "__main__":
    sys.exit(main())
