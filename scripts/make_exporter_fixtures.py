#!/usr/bin/env python3
"""Makes fixtures/exporters/: tiny models as PyTorch's two exporters write them.

Three small networks (random weights, torch seed 0), each exported by the legacy
TorchScript exporter (`torch.onnx.export(..., dynamo=False)`) and by the default one
(`dynamo=True`), with batch 1 and with a dynamic batch:

- `cnn`: a ResNet-like CNN (Conv, BatchNormalization, Relu, MaxPool, a residual block,
  global average pooling, flatten, Linear). Batch-1 dynamo exports flatten with
  `Reshape(x, [1, 8], allowzero=1)`; dynamic-batch dynamo exports write `value_info` with
  the symbolic batch.
- `shuffle`: a ShuffleNetV2-like unit (torchvision's `channel_shuffle`, chunk into two
  branches, depthwise conv): shape subgraphs (Shape, Gather, Div, Mul, Concat) feed
  Reshape and Slice parameters in legacy dynamic-batch exports.
- `dense`: a DenseNet-like block (BatchNormalization before each Conv, concatenation):
  equal BatchNormalization statistics are shared through Identity nodes by the legacy
  exporter.

Plus two edits of `cnn_legacy_dyn.onnx` with the onnx package: `cnn_ir14.onnx` (saved
with IR version 14, as the current onnx package writes) and `cnn_unused_inputs.onnx` (two
extra graph inputs no node reads, as tf2onnx leaves on Keras EfficientNetB0).

For each network, `<net>.json` holds the reference: `x` ([2, 3, 16, 16], uniform in
[0, 1), numpy seed 0), labels `y`, the torch logits, and `grad`, torch autograd's
gradient w.r.t. x of the cross-entropy summed over the batch (harden's `--loss ce`
gradient graph computes d sum(loss) / dx with the per-example loss -log softmax(z)_y).
Every ONNX file is checked against torch with onnxruntime before it is written.

Run with /work/pyenv/bin/python (torch, onnx, onnxscript, onnxruntime, numpy).
"""

import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "exporters")
C, H, W, K = 3, 16, 16, 5


class Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(8)
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, K)

    def forward(self, x):
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        y = F.relu(self.bn2(self.conv2(x)))
        y = self.bn3(self.conv3(y))
        x = F.relu(x + y)
        x = torch.flatten(self.avg(x), 1)
        return self.fc(x)


def channel_shuffle(x, groups):
    # torchvision.models.shufflenetv2.channel_shuffle
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, num_channels, height, width)


class Shuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.b_pw1 = nn.Conv2d(4, 4, 1, bias=False)
        self.b_bn1 = nn.BatchNorm2d(4)
        self.b_dw = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
        self.b_bn2 = nn.BatchNorm2d(4)
        self.b_pw2 = nn.Conv2d(4, 4, 1, bias=False)
        self.b_bn3 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(8, K)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x1, x2 = x.chunk(2, dim=1)
        b = F.relu(self.b_bn1(self.b_pw1(x2)))
        b = self.b_bn2(self.b_dw(b))
        b = F.relu(self.b_bn3(self.b_pw2(b)))
        x = channel_shuffle(torch.cat((x1, b), dim=1), 2)
        x = x.mean([2, 3])
        return self.fc(x)


class Dense(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.layers = nn.ModuleList()
        c = 8
        for _ in range(2):
            self.layers.append(
                nn.ModuleDict(
                    dict(
                        bn1=nn.BatchNorm2d(c),
                        conv1=nn.Conv2d(c, 8, 1, bias=False),
                        bn2=nn.BatchNorm2d(8),
                        conv2=nn.Conv2d(8, 4, 3, padding=1, bias=False),
                    )
                )
            )
            c += 4
        self.bn_t = nn.BatchNorm2d(c)
        self.conv_t = nn.Conv2d(c, 8, 1, bias=False)
        self.bn_f = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, K)

    def forward(self, x):
        x = self.conv0(x)
        for layer in self.layers:
            y = layer["conv1"](F.relu(layer["bn1"](x)))
            y = layer["conv2"](F.relu(layer["bn2"](y)))
            x = torch.cat([x, y], 1)
        x = F.avg_pool2d(self.conv_t(F.relu(self.bn_t(x))), 2)
        x = F.relu(self.bn_f(x))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


def randomize(model, share_var):
    """Random BatchNormalization statistics and affine parameters, so that the gradient
    depends on them; with `share_var` every running_var stays 1 (as in a freshly made
    torchvision DenseNet), so the legacy exporter shares them through Identity nodes."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=g)
            m.bias.data = 0.2 * torch.randn(n, generator=g)
            m.running_mean.data = 0.1 * torch.randn(n, generator=g)
            if not share_var:
                m.running_var.data = 0.5 + torch.rand(n, generator=g)
    return model.eval()


def export(model, path, dynamo, dynamic):
    x = torch.zeros(1 if not dynamic else 2, C, H, W)
    kw = dict(input_names=["input"], output_names=["logits"])
    if dynamo:
        if dynamic:
            kw["dynamic_shapes"] = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}}
        torch.onnx.export(model, (x,), path, dynamo=True, external_data=False, **kw)
    else:
        if dynamic:
            kw["dynamic_axes"] = {"input": {0: "batch"}, "logits": {0: "batch"}}
        torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17, **kw)


def run_ort(path, x, extra=None):
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feeds = {"input": x}
    feeds.update(extra or {})
    return s.run(None, feeds)[0]


def check(path, model, x, batch1, extra=None):
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    if batch1:
        got = np.concatenate([run_ort(path, x[i : i + 1], extra) for i in range(len(x))])
    else:
        got = run_ort(path, x, extra)
    err = np.abs(got - want).max() / max(1e-6, np.abs(want).max())
    if err > 1e-5:
        sys.exit(f"{path}: onnxruntime disagrees with torch (relative error {err})")


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((2, C, H, W), dtype=np.float32)
    y = np.array([1, 3], dtype=np.int64)
    nets = {
        "cnn": randomize(Cnn(), share_var=False),
        "shuffle": randomize(Shuffle(), share_var=False),
        "dense": randomize(Dense(), share_var=True),
    }
    for name, model in nets.items():
        xt = torch.from_numpy(x).clone().requires_grad_(True)
        logits = model(xt)
        loss = F.cross_entropy(logits, torch.from_numpy(y), reduction="sum")
        (grad,) = torch.autograd.grad(loss, xt)
        ref = dict(
            x=x.ravel().tolist(),
            x_shape=list(x.shape),
            y=y.tolist(),
            logits=logits.detach().numpy().ravel().tolist(),
            grad=grad.numpy().ravel().tolist(),
        )
        with open(os.path.join(OUT, f"{name}.json"), "w") as f:
            json.dump(ref, f)
        for exporter in ["legacy", "dynamo"]:
            for batch in ["b1", "dyn"]:
                path = os.path.join(OUT, f"{name}_{exporter}_{batch}.onnx")
                export(model, path, exporter == "dynamo", batch == "dyn")
                check(path, model, x, batch == "b1")
                print(path, os.path.getsize(path))

    base = onnx.load(os.path.join(OUT, "cnn_legacy_dyn.onnx"))
    m = onnx.ModelProto()
    m.CopyFrom(base)
    m.ir_version = 14
    path = os.path.join(OUT, "cnn_ir14.onnx")
    onnx.save(m, path)
    # onnxruntime (the Python one used here is newer than the ONNX Runtime harden tests
    # with) takes it.
    check(path, nets["cnn"], x, False)

    m = onnx.ModelProto()
    m.CopyFrom(base)
    m.graph.input.append(onnx.helper.make_tensor_value_info("input_2", onnx.TensorProto.FLOAT, ["batch", 4]))
    m.graph.input.append(onnx.helper.make_tensor_value_info("input_3", onnx.TensorProto.INT64, [1]))
    onnx.checker.check_model(m)
    path = os.path.join(OUT, "cnn_unused_inputs.onnx")
    onnx.save(m, path)
    extra = {"input_2": np.zeros((2, 4), np.float32), "input_3": np.zeros(1, np.int64)}
    check(path, nets["cnn"], x, False, extra)


if __name__ == "__main__":
    main()
