#!/usr/bin/env python3
"""Make the models that trip harden's sanity checks, and their data (numpy seed 1).

Run: /tmp/tfvenv/bin/python scripts/make_report_fixtures.py   (needs numpy, onnx,
onnxruntime). Reads fixtures/mlp.onnx (made by scripts/make_fixtures.py) for its weights.
Writes into fixtures/ and fixtures/data/; re-running gives the same bytes. Each model is
checked with onnxruntime here, so tests need no Python. fixtures/README.md says what each
file is for.
"""
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fixtures")
DATA = os.path.join(OUT, "data")
rng = np.random.default_rng(1)


def t(name, a):
    return numpy_helper.from_array(np.asarray(a, dtype=np.float32), name)


def vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def save(nodes, inputs, outputs, inits, name, opset=13):
    g = helper.make_graph(nodes, name.replace(".onnx", ""), inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                          producer_name="harden-report-fixtures")
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, os.path.join(OUT, name))
    return ort.InferenceSession(os.path.join(OUT, name), providers=["CPUExecutionProvider"])


def main():
    os.makedirs(DATA, exist_ok=True)

    # masked_round.onnx: gradient masking by rounding the input. 16 inputs in [0,1],
    # Round, then logit1 - logit0 = sum(round(x)) - 7.5: class 1 when most inputs round
    # up. The input gradient is zero everywhere (almost everywhere, exactly), so gradient
    # attacks find nothing, yet eps 0.45 moves 0.1 to 0.55, which rounds up: every point
    # is breakable. Data: 20 points near 0.1 (class 0) and 20 near 0.9 (class 1).
    d = 16
    w = np.zeros((d, 2), np.float32)
    w[:, 1] = 1.0
    s = save([helper.make_node("Round", ["x"], ["r"]),
              helper.make_node("MatMul", ["r", "W"], ["m"]),
              helper.make_node("Add", ["m", "b"], ["logits"])],
             [vi("x", ["N", d])], [vi("logits", ["N", 2])],
             [t("W", w), t("b", [0.0, -7.5])], "masked_round.onnx")
    y = np.repeat(np.arange(2), 20).astype(np.int64)
    x = (0.1 + 0.8 * y[:, None] + rng.uniform(-0.05, 0.05, (40, d))).astype(np.float32)
    assert (s.run(None, {"x": x})[0].argmax(1) == y).all()
    np.savez(os.path.join(DATA, "masked.npz"), x=x, y=y)

    # trap.onnx: a loss landscape that rises, falls, then rises steeply along the
    # direction of the gradient, so one big step (FGSM) lands past the trap while small
    # steps (PGD) oscillate in it. u = mean(x); with the data's u = 0.5,
    # h = logit1 - logit0 = 20 (u-0.5) - 1 - 40 relu(u-0.53) + 120 relu(u-0.56): h < 0
    # (class 0) up to u = 0.57, and at u = 0.6 (every input +0.1) h = 3 (class 1).
    # Data: 40 points, inputs 0.5 +- 0.2 with mean exactly 0.5, all class 0.
    d = 64
    w1 = np.full((d, 3), 1.0 / d, np.float32)
    b1 = np.array([0.0, -0.53, -0.56], np.float32)
    w2 = np.zeros((3, 2), np.float32)
    w2[:, 1] = [20.0, -40.0, 120.0]
    b2 = np.array([0.0, -1.0 - 20.0 * 0.5], np.float32)
    s = save([helper.make_node("MatMul", ["x", "W1"], ["m1"]),
              helper.make_node("Add", ["m1", "b1"], ["a1"]),
              helper.make_node("Relu", ["a1"], ["h1"]),
              helper.make_node("MatMul", ["h1", "W2"], ["m2"]),
              helper.make_node("Add", ["m2", "b2"], ["logits"])],
             [vi("x", ["N", d])], [vi("logits", ["N", 2])],
             [t("W1", w1), t("b1", b1), t("W2", w2), t("b2", b2)], "trap.onnx")
    noise = rng.uniform(-0.2, 0.2, (40, d))
    noise -= noise.mean(1, keepdims=True)
    x = (0.5 + noise).astype(np.float32)
    y = np.zeros(40, np.int64)
    out = s.run(None, {"x": x})[0]
    assert (out.argmax(1) == 0).all()
    corner = s.run(None, {"x": (x + 0.1).astype(np.float32)})[0]
    assert (corner.argmax(1) == 1).all()
    np.savez(os.path.join(DATA, "trap.npz"), x=x, y=y)

    # random_forward.onnx: mlp.onnx with uniform noise in [0, 0.5) added to its input by
    # RandomUniformLike (no seed): two forward passes of the same input differ.
    mlp = onnx.load(os.path.join(OUT, "mlp.onnx"))
    inits = list(mlp.graph.initializer)
    # tract 0.23 tells RandomUniformLike from RandomUniform by the node's *name* ending in
    # "Like" (src/ops/random.rs), so the name does.
    nodes = [helper.make_node("RandomUniformLike", ["x"], ["noise"], name="noise_uniformLike",
                              low=0.0, high=0.5),
             helper.make_node("Add", ["x", "noise"], ["xn"])]
    for n in mlp.graph.node:
        n2 = onnx.NodeProto()
        n2.CopyFrom(n)
        n2.input[:] = ["xn" if i == "x" else i for i in n.input]
        nodes.append(n2)
    s = save(nodes, [vi("x", ["N", 784])], [vi("logits", ["N", 10])], inits,
             "random_forward.onnx")
    z = np.zeros((2, 784), np.float32)
    assert not np.array_equal(s.run(None, {"x": z})[0], s.run(None, {"x": z})[0])


if __name__ == "__main__":
    main()
