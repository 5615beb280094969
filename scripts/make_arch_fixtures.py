#!/usr/bin/env python3
"""Small random-weight versions of the architectures users bring, exported to ONNX, with
reference data: fixtures/arch/.

    python scripts/make_arch_fixtures.py torch   # torchvision/timm models, both exporters
    python scripts/make_arch_fixtures.py keras   # one Keras application through tf2onnx

`torch` needs torch, torchvision, timm, onnx, onnxscript (and onnxruntime for a check);
`keras` needs tensorflow-cpu, tf2onnx and onnxruntime, in a separate virtualenv (see
fixtures/arch/README.md). Every model is built with the real torchvision/timm/Keras
classes, reduced in width and depth through their constructor arguments, with random
weights from a fixed seed; normalisation affine parameters are randomised, and
BatchNormalization statistics are those of a calibration batch of image-like inputs,
perturbed (so that no layer is an identity and activations keep their scale: random
statistics leave a deep net nearly constant in its input); the classifier is scaled so
the logits spread over a few units (softmax neither uniform nor saturated). Models are
in eval mode.

Each family gets fixtures/arch/<family>.npz with
  x       [4, ...] float32 in [0, 1]: the model's raw input (NCHW; NHWC for Keras)
  y       [4] int64: labels (the model's own prediction for the first three, another
          class for the last)
  logits  [4, 10] float32: the model's logits (the input of a final Softmax for Keras)
  grad    [4, ...] float32: d/dx of sum over the batch of -log softmax(logits)_y, which
          is what `harden grad --loss ce` outputs as harden_grad (a per-example
          cross-entropy summed, not averaged, over the batch), computed in float64 autograd
          on the float32 weights (stored rounded to float32).
and <family>.legacy.onnx (torch.onnx.export(dynamo=False), opset 17) and
<family>.dynamo.onnx (torch.onnx.export(dynamo=True), the exporter's default opset), both
with a dynamic batch, weights inlined. The metadata table is printed at the end (it goes
into fixtures/arch/README.md).
"""

import collections
import functools
import json
import math
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fixtures", "arch")
CLASSES = 10
N = 4
SEED = 0
# ONNX Runtime 1.31 reads at most IR 13; the exporters here write 8 (legacy, tf2onnx) and
# 10 (dynamo), kept as written. A model rebuilt with the `onnx` package's helpers gets its
# IR_VERSION (14 in onnx 1.23): resnet_basic.onnxpkg.onnx is the legacy export re-made
# that way, to exercise that path.
IR14_FROM = "resnet_basic.legacy"


def ops_of(model):
    return dict(sorted(collections.Counter(n.op_type for n in model.graph.node).items()))


def finish_onnx(path, name, meta):
    """Inline external data, cap the IR version, record the metadata."""
    import onnx

    m = onnx.load(path, load_external_data=True)
    written_ir = m.ir_version
    # Inline everything into one file.
    for t in m.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise SystemExit(f"{path}: external data left after loading")
    data = m.SerializeToString()
    # External data files the exporter may have written next to the model.
    for f in os.listdir(os.path.dirname(path)):
        if f.startswith(os.path.basename(path)) and f.endswith(".data"):
            os.remove(os.path.join(os.path.dirname(path), f))
    with open(path, "wb") as fh:
        fh.write(data)
    onnx.checker.check_model(path)
    opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    meta.update(
        file=os.path.basename(path),
        bytes=os.path.getsize(path),
        opset=opset,
        ir_version=m.ir_version,
        ir_version_written=written_ir,
        producer=f"{m.producer_name} {m.producer_version}".strip(),
        nodes=len(m.graph.node),
        ops=ops_of(m),
    )
    return m


# ---------------------------------------------------------------------------- torch


def torch_models():
    """(family, builder, input shape, what it exercises)"""
    import torch
    from torch import nn
    import torchvision.models as tvm
    from torchvision.models import resnet as tvr
    from torchvision.models import mobilenetv3, efficientnet, regnet, convnext, swin_transformer
    import importlib

    # (torchvision.models.googlenet is also the name of a function)
    tvg = importlib.import_module("torchvision.models.googlenet")
    from torchvision.models.vision_transformer import VisionTransformer

    class SmallResNet(tvr.ResNet):
        """torchvision's ResNet with its widths divided (the class hard-codes 64..512)."""

        def __init__(self, block, layers, width=8, num_classes=CLASSES):
            nn.Module.__init__(self)
            self._norm_layer = nn.BatchNorm2d
            self.inplanes = width
            self.dilation = 1
            self.groups = 1
            self.base_width = 64
            self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            self.layer1 = self._make_layer(block, width, layers[0])
            self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
            self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
            self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(width * 8 * block.expansion, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def googlenet():
        # GoogLeNet's widths are fixed in the class; its conv_block hook builds every
        # convolution, so a block dividing the widths by 8 shrinks the whole net (the
        # Inception branch sums stay consistent because every width is a multiple of 8).
        def conv_block(i, o, **kw):
            return tvg.BasicConv2d(i if i == 3 else i // 8, o // 8, **kw)

        m = tvg.GoogLeNet(
            num_classes=CLASSES,
            aux_logits=False,
            transform_input=False,
            init_weights=True,
            blocks=[conv_block, functools.partial(tvg.Inception, conv_block=conv_block),
                    tvg.InceptionAux],
        )
        m.fc = nn.Linear(1024 // 8, CLASSES)
        return m

    def mobilenet_v3():
        # Four of MobileNetV3-Small's blocks (its first two, ReLU, the first with SE; then
        # two HardSwish blocks with SE), at width 0.5.
        def irc(*a):
            return mobilenetv3.InvertedResidualConfig(*a, width_mult=0.5)

        setting = [
            irc(16, 3, 16, 16, True, "RE", 2, 1),
            irc(16, 3, 72, 24, False, "RE", 2, 1),
            irc(24, 5, 96, 40, True, "HS", 2, 1),
            irc(40, 5, 120, 48, True, "HS", 1, 1),
        ]
        return mobilenetv3.MobileNetV3(setting, last_channel=128, num_classes=CLASSES)

    def efficientnet_b0():
        setting, last = efficientnet._efficientnet_conf(
            "efficientnet_b0", width_mult=0.25, depth_mult=0.25
        )
        # Its first five stages (to 112 channels at width 1).
        return efficientnet.EfficientNet(
            setting[:5], dropout=0.2, stochastic_depth_prob=0.0, num_classes=CLASSES, last_channel=128
        )

    def regnet_y():
        params = regnet.BlockParams.from_init_params(
            depth=4, w_0=8, w_a=8.0, w_m=2.0, group_width=8, se_ratio=0.25
        )
        return regnet.RegNet(params, num_classes=CLASSES, stem_width=8)

    def convnext_t():
        C = convnext.CNBlockConfig
        return convnext.ConvNeXt(
            [C(16, 32, 1), C(32, 64, 1), C(64, None, 1)],
            stochastic_depth_prob=0.0,
            layer_scale=0.5,
            num_classes=CLASSES,
        )

    def vit():
        return VisionTransformer(
            image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
            mlp_dim=64, num_classes=CLASSES,
        )

    def deit():
        from timm.models.deit import VisionTransformerDistilled

        return VisionTransformerDistilled(
            img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
            num_classes=CLASSES,
        )

    def swin():
        return swin_transformer.SwinTransformer(
            patch_size=[2, 2], embed_dim=16, depths=[2, 2], num_heads=[2, 4],
            window_size=[4, 4], stochastic_depth_prob=0.0, num_classes=CLASSES,
        )

    img = (3, 32, 32)
    return [
        ("resnet_basic", lambda: SmallResNet(tvr.BasicBlock, [1, 1, 1, 1], width=4), img,
         "ResNet, basic blocks (torchvision ResNet(BasicBlock, [1,1,1,1]), widths 4..32)"),
        ("resnet_bottleneck", lambda: SmallResNet(tvr.Bottleneck, [1, 1, 1, 1], width=4), img,
         "ResNet, bottleneck blocks (torchvision ResNet(Bottleneck, [1,1,1,1]), widths 4..32 x4)"),
        ("mobilenet_v2", lambda: tvm.MobileNetV2(num_classes=CLASSES, width_mult=0.25,
                                                 inverted_residual_setting=[
                                                     [1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 1, 2],
                                                     [6, 64, 1, 2], [6, 96, 1, 1]]), img,
         "MobileNetV2 (width 0.25, 5 stages): ReLU6, depthwise, inverted residuals"),
        ("mobilenet_v3", mobilenet_v3, img,
         "MobileNetV3-Small (width 0.5, 4 blocks): HardSwish, HardSigmoid, SE blocks"),
        ("efficientnet", efficientnet_b0, img,
         "EfficientNet-B0 (width 0.25, depth 0.25, stages 1-5): SiLU, SE, MBConv"),
        ("densenet", lambda: tvm.DenseNet(growth_rate=8, block_config=(2, 2, 2, 2),
                                          num_init_features=16, bn_size=2,
                                          num_classes=CLASSES), img,
         "DenseNet (growth 8, blocks 2,2,2,2): dense concatenation, transitions"),
        ("densenet_fresh", lambda: tvm.DenseNet(growth_rate=8, block_config=(2, 2, 2, 2),
                                                num_init_features=16, bn_size=2,
                                                num_classes=CLASSES), img,
         "DenseNet as densenet, BatchNorm as initialised (weight 1, bias 0, mean 0, var 1): "
         "the legacy exporter shares the equal initializers through Identity nodes"),
        ("shufflenet_v2", lambda: tvm.ShuffleNetV2([2, 2, 2], [8, 16, 32, 64, 128],
                                                   num_classes=CLASSES), img,
         "ShuffleNetV2 (channels 8..128, 2 blocks a stage): channel split, channel shuffle"),
        ("regnet", regnet_y, img,
         "RegNetY (depth 4, width 8..): grouped convolutions, SE"),
        ("googlenet", googlenet, img,
         "GoogLeNet (widths / 8): Inception concat branches, ceil-mode max pooling"),
        ("convnext", convnext_t, img,
         "ConvNeXt (dims 16,32,64): LayerNorm, GELU, depthwise 7x7, layer scale"),
        ("vit", vit, img,
         "ViT (torchvision VisionTransformer 32x32, patch 8, 2 layers, dim 32): patch embedding, "
         "class token, attention, LayerNorm, GELU"),
        ("deit", deit, img,
         "DeiT (timm VisionTransformerDistilled 32x32, patch 8, 2 layers, dim 32): class and "
         "distillation tokens, two heads averaged"),
        ("swin", swin, img,
         "Swin (torchvision SwinTransformer, patch 2, dim 16, depths 2,2, window 4): window "
         "attention, shifted windows, patch merging"),
    ]


def remake_with_onnx_helper(m, family, what):
    """The model rebuilt by onnx.helper.make_model, as a user editing it would: IR version
    onnx.IR_VERSION."""
    import onnx

    name = f"{family}.onnxpkg"
    path = os.path.join(OUT, f"{name}.onnx")
    m2 = onnx.helper.make_model(m.graph, opset_imports=list(m.opset_import),
                                producer_name="onnx.helper.make_model")
    onnx.save(m2, path)
    entry = dict(name=name, family=family, what=what + "; the legacy export re-made by "
                 f"onnx.helper.make_model (onnx {onnx.__version__})", exporter="onnxpkg",
                 input=[-1, 3, 32, 32])
    finish_onnx(path, name, entry)
    print(json.dumps({k: v for k, v in entry.items() if k != "ops"}), flush=True)
    return entry


def images(n, shape, rng, channels_last=False):
    """n image-like inputs in [0, 1]: per-channel brightness, a smooth random pattern and
    a little pixel noise, so examples differ the way images do (uniform noise makes every
    example look alike to a network)."""
    c, h, w = shape
    lo = rng.random((n, c, 1, 1)) * 0.6 + 0.2
    coarse = rng.normal(size=(n, c, 4, 4)) * 0.25
    smooth = np.kron(coarse, np.ones((1, 1, h // 4, w // 4)))
    x = np.clip(lo + smooth + rng.normal(size=(n, c, h, w)) * 0.08, 0.0, 1.0)
    if channels_last:
        x = x.transpose(0, 2, 3, 1)
    return x.astype(np.float32)


def randomise(model, gen, calib, batchnorm=True):
    """Random affine parameters of every normalisation; BatchNorm statistics from a
    calibration batch (then perturbed), so that activations keep their scale through the
    net (random statistics make deep nets nearly constant in their input)."""
    import torch
    from torch import nn

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not batchnorm:
        bns = []
    with torch.no_grad():
        for m in bns:
            if m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.2)
            m.reset_running_stats()
            m.momentum = None  # cumulative: one batch gives its own statistics
            m.train()
        if bns:
            model(calib)
        model.eval()
        for m in bns:
            m.momentum = 0.1
            sd = m.running_var.sqrt()
            m.running_mean.add_(torch.randn(sd.shape, generator=gen) * 0.1 * sd)
            m.running_var.mul_(torch.rand(sd.shape, generator=gen) * 0.5 + 0.8)
        for m in model.modules():
            if isinstance(m, nn.LayerNorm) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.2)
        # Some classes start their classifier at zero (torchvision's ViT).
        for h in classifier_heads(model):
            if not h.weight.any():
                h.weight.copy_(torch.randn(h.weight.shape, generator=gen) / h.in_features ** 0.5)
        # Class tokens and relative position biases start at (nearly) zero in some
        # classes; position embeddings are random already.
        for name, p in model.named_parameters():
            if any(k in name for k in ("cls_token", "dist_token", "class_token",
                                       "relative_position_bias_table")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)


def classifier_heads(model):
    from torch import nn

    return [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == CLASSES]


def make_torch():
    import torch
    import onnx
    import onnxruntime as ort

    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(SEED)
    meta = []
    only = set(sys.argv[2:])
    for family, build, shape, what in torch_models():
        if only and family not in only:
            continue
        gen = torch.Generator().manual_seed(SEED)
        torch.manual_seed(SEED)
        model = build().eval()
        rng = np.random.default_rng(SEED)
        randomise(model, gen, torch.from_numpy(images(32, shape, rng)),
                  batchnorm=not family.endswith("_fresh"))
        x = torch.from_numpy(images(N, shape, rng))
        with torch.no_grad():
            z = model(x)
            # Logits spread of about 2 (std over the batch and classes).
            s = float(z.std())
            for h in classifier_heads(model):
                h.weight.mul_(2.0 / s)
                if h.bias is not None:
                    h.bias.mul_(2.0 / s)
            z = model(x)
        y = z.argmax(1)
        y[-1] = (y[-1] + 1 + int(torch.randint(CLASSES - 1, (1,), generator=gen))) % CLASSES
        # Reference in float64 on the same (float32) weights.
        m64 = build().eval()
        m64.load_state_dict(model.state_dict())
        m64 = m64.double()
        x64 = x.double().requires_grad_(True)
        z64 = m64(x64)
        loss = torch.nn.functional.cross_entropy(z64, y, reduction="sum")
        (g64,) = torch.autograd.grad(loss, x64)
        np.savez(
            os.path.join(OUT, f"{family}.npz"),
            x=x.numpy().astype(np.float32),
            y=y.numpy().astype(np.int64),
            logits=z64.detach().numpy().astype(np.float32),
            grad=g64.numpy().astype(np.float32),
        )
        for exporter in ("legacy", "dynamo"):
            name = f"{family}.{exporter}"
            path = os.path.join(OUT, f"{name}.onnx")
            if os.path.exists(path):
                os.remove(path)
            entry = dict(
                name=name, family=family, what=what, exporter=exporter,
                torch=torch.__version__, input=[-1] + list(shape),
            )
            try:
                if exporter == "legacy":
                    torch.onnx.export(
                        model, (x,), path, dynamo=False, opset_version=17,
                        input_names=["input"], output_names=["logits"],
                        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                    )
                else:
                    batch = torch.export.Dim("batch", min=1, max=1024)
                    torch.onnx.export(
                        model, (x,), path, dynamo=True, external_data=False,
                        input_names=["input"], output_names=["logits"],
                        dynamic_shapes=({0: batch},),
                    )
                m = finish_onnx(path, name, entry)
                if name == IR14_FROM:
                    meta.append(remake_with_onnx_helper(m, family, what))
                sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"]) \
                    if m.ir_version <= 13 else None
                if sess is not None:
                    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
                    err = float(np.abs(got - z64.detach().numpy()).max())
                    entry["ort_max_abs_err"] = err
                    assert err < 1e-3, f"{name}: ONNX Runtime differs from torch by {err}"
            except Exception as e:  # noqa: BLE001 - recorded, reported
                entry["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                if os.path.exists(path):
                    os.remove(path)
            print(json.dumps({k: v for k, v in entry.items() if k != "ops"}), flush=True)
            meta.append(entry)
    write_meta(meta, "torch")


# ---------------------------------------------------------------------------- keras


def make_keras():
    import tensorflow as tf
    import keras
    import tf2onnx
    import onnxruntime as ort

    os.makedirs(OUT, exist_ok=True)
    family = "keras_mobilenet_v2"
    shape = (32, 32, 3)

    def build(floatx):
        keras.config.set_floatx(floatx)
        keras.utils.set_random_seed(SEED)
        return keras.applications.MobileNetV2(
            alpha=0.35, input_shape=shape, weights=None, classes=CLASSES,
            classifier_activation="softmax",
        )

    model = build("float32")
    rng = np.random.default_rng(SEED)
    # Random BatchNormalization affine parameters; statistics from a calibration batch
    # (momentum 0: the batch's own), then perturbed (as for the torch models).
    bns = [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]
    for layer in bns:
        g, b, mu, var = layer.get_weights()
        layer.set_weights([
            (rng.random(g.shape) + 0.5).astype(np.float32),
            (rng.normal(size=b.shape) * 0.2).astype(np.float32),
            mu, var,
        ])
        layer.momentum = 0.0
    model(images(32, (3,) + shape[:2], rng, channels_last=True), training=True)
    for layer in bns:
        layer.momentum = 0.99
        g, b, mu, var = layer.get_weights()
        sd = np.sqrt(var)
        layer.set_weights([
            g, b,
            (mu + rng.normal(size=mu.shape) * 0.1 * sd).astype(np.float32),
            (var * (rng.random(var.shape) * 0.5 + 0.8)).astype(np.float32),
        ])
    x = images(N, (3,) + shape[:2], rng, channels_last=True)
    head = model.get_layer("predictions")
    feats = keras.Model(model.input, head.input)
    w, bias = head.get_weights()
    z = feats(x).numpy() @ w + bias
    s = float(z.std())
    head.set_weights([w * (2.0 / s), bias * (2.0 / s)])
    weights = model.get_weights()

    m64 = build("float64")
    m64.set_weights([v.astype(np.float64) for v in weights])
    feats64 = keras.Model(m64.input, m64.get_layer("predictions").input)
    w64, b64 = (v.astype(np.float64) for v in head.get_weights())
    x64 = tf.Variable(x.astype(np.float64))
    with tf.GradientTape() as tape:
        z64 = tf.matmul(feats64(x64), w64) + b64
        y = np.argmax(z64.numpy(), 1)
        y[-1] = (y[-1] + 1 + int(rng.integers(CLASSES - 1))) % CLASSES
        loss = tf.reduce_sum(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z64)
        )
    g64 = tape.gradient(loss, x64).numpy()
    keras.config.set_floatx("float32")
    np.savez(
        os.path.join(OUT, f"{family}.npz"),
        x=x, y=y.astype(np.int64), logits=z64.numpy().astype(np.float32),
        grad=g64.astype(np.float32),
    )
    name = f"{family}.tf2onnx"
    path = os.path.join(OUT, f"{name}.onnx")
    spec = (tf.TensorSpec((None,) + shape, tf.float32, name="input"),)
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=path)
    entry = dict(
        name=name, family=family, exporter="tf2onnx",
        what="Keras MobileNetV2 (alpha 0.35, 32x32x3 NHWC, softmax output)",
        tensorflow=tf.__version__, keras=keras.__version__, tf2onnx=tf2onnx.__version__,
        input=[-1] + list(shape),
    )
    finish_onnx(path, name, entry)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    p = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    zz = z64.numpy()
    p64 = np.exp(zz - zz.max(1, keepdims=True))
    p64 /= p64.sum(1, keepdims=True)
    entry["ort_max_abs_err"] = float(np.abs(p - p64).max())
    assert entry["ort_max_abs_err"] < 1e-4, entry
    print(json.dumps({k: v for k, v in entry.items() if k != "ops"}), flush=True)
    write_meta([entry], "keras")


def write_meta(entries, part):
    """fixtures/arch/meta.<part>.json (what was made, with which versions), then
    fixtures/arch/README.md from both parts' files."""
    path = os.path.join(OUT, f"meta.{part}.json")
    if os.path.exists(path):
        # A partial run (some families only) replaces their entries.
        names = {e["name"] for e in entries}
        old = [e for e in json.load(open(path)) if e["name"] not in names]
        order = [n for n, *_ in torch_models()] if part == "torch" else []
        entries = sorted(old + entries, key=lambda e: (
            order.index(e["family"]) if e["family"] in order else 0,
            ("legacy", "onnxpkg", "dynamo", "tf2onnx").index(e["exporter"])))
    with open(path, "w") as fh:
        json.dump(entries, fh, indent=1, sort_keys=True)
        fh.write("\n")
    rows = []
    for p in ("torch", "keras"):
        f = os.path.join(OUT, f"meta.{p}.json")
        if os.path.exists(f):
            rows += json.load(open(f))
    lines = [
        "# Architecture fixtures",
        "",
        "Small random-weight versions of the architectures users bring, for",
        "tests/architectures.rs. Made by `scripts/make_arch_fixtures.py` (its docstring says",
        "what each .npz holds and how the reference gradient is defined):",
        "",
        "    /work/pyenv/bin/python scripts/make_arch_fixtures.py torch   # torch, torchvision, timm, onnx, onnxscript, onnxruntime",
        "    /work/tfenv/bin/python scripts/make_arch_fixtures.py keras   # pip install tensorflow-cpu tf2onnx onnxruntime",
        "",
        "Seeds are fixed; re-running with the same package versions gives the same weights",
        "and references (exported files may differ in node names across exporter versions).",
        "`meta.torch.json` and `meta.keras.json` hold the full record (op histograms",
        "included). `ort_max_abs_err` is ONNX Runtime's (Python) largest difference from the",
        "float64 reference logits (from the softmax probabilities for Keras).",
        "",
        "IR versions: the legacy exporter and tf2onnx write IR 8, the dynamo exporter IR 10;",
        "kept as written. `resnet_basic.onnxpkg.onnx` is `resnet_basic.legacy.onnx` re-made",
        "with `onnx.helper.make_model`, which stamps the `onnx` package's IR version (14 with",
        "onnx 1.23; ONNX Runtime 1.31 reads at most 13): the IR-14 path.",
        "",
        "| file | exporter | opset | IR | versions | bytes | nodes | ORT err | what |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in rows:
        if "error" in e:
            lines.append(f"| {e['name']} | {e['exporter']} | | | | | | | export failed: {e['error']} |")
            continue
        if e["exporter"] == "tf2onnx":
            ver = f"tensorflow {e['tensorflow']}, keras {e['keras']}, tf2onnx {e['tf2onnx']}"
        elif e["exporter"] == "onnxpkg":
            ver = "onnx.helper"
        else:
            ver = f"torch {e['torch']}"
        err = e.get("ort_max_abs_err")
        lines.append(
            f"| {e['file']} | {e['exporter']} | {e['opset']} | {e['ir_version']} | {ver} | "
            f"{e['bytes']} | {e['nodes']} | {'' if err is None else f'{err:.1e}'} | {e['what']} |"
        )
    with open(os.path.join(OUT, "README.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("torch", "keras"):
        raise SystemExit(__doc__)
    make_torch() if sys.argv[1] == "torch" else make_keras()
