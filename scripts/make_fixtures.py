#!/usr/bin/env python3
"""Make harden's test fixtures: tiny ONNX models and data, deterministic (numpy seed 0).

Run: python3 scripts/make_fixtures.py   (needs numpy, onnx, onnxruntime; reads the
bundled Fashion-MNIST slice in data/fashion-mnist-slice). Writes fixtures/ and
fixtures/expected.json (onnxruntime logits on fixed inputs, so tests need no Python).
"""
import gzip
import json
import os
import struct

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fixtures")
DATA = os.path.join(OUT, "data")
SLICE = os.path.join(ROOT, "data", "fashion-mnist-slice")
rng = np.random.default_rng(0)


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def model(nodes, inputs, outputs, inits, opset, ir=None, name="fixture"):
    if ir is not None and ir < 4:
        # IR 3 lists every initializer among the graph inputs too.
        inputs = inputs + [helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in inits]
    g = helper.make_graph(nodes, name, inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="harden-fixtures")
    m.ir_version = ir if ir is not None else min(onnx.IR_VERSION, 8)
    return m


def save(m, name, check=True):
    if check:
        onnx.checker.check_model(m)
    onnx.save(m, os.path.join(OUT, name))


def t(name, a):
    return numpy_helper.from_array(np.asarray(a, dtype=np.float32), name)


def vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def train_mlp(x, y, hidden=32, steps=400, lr=0.5):
    """Full-batch gradient descent on a one-hidden-layer ReLU MLP."""
    d, k = x.shape[1], 10
    w1 = rng.normal(0, np.sqrt(2 / d), (d, hidden)).astype(np.float32)
    b1 = np.zeros(hidden, np.float32)
    w2 = rng.normal(0, np.sqrt(2 / hidden), (hidden, k)).astype(np.float32)
    b2 = np.zeros(k, np.float32)
    onehot = np.eye(k, dtype=np.float32)[y]
    for _ in range(steps):
        h = np.maximum(x @ w1 + b1, 0)
        z = h @ w2 + b2
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        dz = (p - onehot) / len(x)
        dw2, db2 = h.T @ dz, dz.sum(0)
        dh = (dz @ w2.T) * (h > 0)
        dw1, db1 = x.T @ dh, dh.sum(0)
        w1 -= lr * dw1; b1 -= lr * db1; w2 -= lr * dw2; b2 -= lr * db2
    return w1, b1, w2, b2


def main():
    os.makedirs(DATA, exist_ok=True)
    xtr = read_idx(os.path.join(SLICE, "train-images-idx3-ubyte.gz")).reshape(-1, 784).astype(np.float32) / 255
    ytr = read_idx(os.path.join(SLICE, "train-labels-idx1-ubyte.gz")).astype(np.int64)
    xte = read_idx(os.path.join(SLICE, "t10k-images-idx3-ubyte.gz")).reshape(-1, 784).astype(np.float32) / 255
    yte = read_idx(os.path.join(SLICE, "t10k-labels-idx1-ubyte.gz")).astype(np.int64)
    w1, b1, w2, b2 = train_mlp(xtr, ytr)
    acc = float(((np.maximum(xte @ w1 + b1, 0) @ w2 + b2).argmax(1) == yte).mean())
    print(f"mlp accuracy on the 1000-image test slice: {acc:.3f}")

    # mlp.onnx: Gemm/Relu/Gemm, dynamic batch, opset 13, logits.
    mlp = model(
        [helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], name="fc1", transB=1),
         helper.make_node("Relu", ["h"], ["r"], name="relu1"),
         helper.make_node("Gemm", ["r", "W2", "B2"], ["logits"], name="fc2", transB=1)],
        [vi("x", ["N", 784])], [vi("logits", ["N", 10])],
        [t("W1", w1.T), t("B1", b1), t("W2", w2.T), t("B2", b2)], 13)
    save(mlp, "mlp.onnx")

    # mlp_matmul.onnx: tf2onnx idiom MatMul+Add, ends in Softmax, opset 11.
    save(model(
        [helper.make_node("MatMul", ["x", "W1"], ["m1"]), helper.make_node("Add", ["m1", "B1"], ["h"]),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "W2"], ["m2"]), helper.make_node("Add", ["m2", "B2"], ["z"]),
         helper.make_node("Softmax", ["z"], ["probs"], axis=1)],
        [vi("x", ["N", 784])], [vi("probs", ["N", 10])],
        [t("W1", w1), t("B1", b1), t("W2", w2), t("B2", b2)], 11), "mlp_matmul.onnx")

    # cnn_bn.onnx: Conv/BN/Relu/MaxPool/Conv(stride 2)/Relu, tf2onnx-style flatten, Gemm.
    c1 = rng.normal(0, 0.5, (4, 1, 3, 3)); c1b = rng.normal(0, 0.1, 4)
    c2 = rng.normal(0, 0.3, (8, 4, 3, 3)); c2b = rng.normal(0, 0.1, 8)
    fc = rng.normal(0, 0.1, (10, 8 * 6 * 6)); fcb = rng.normal(0, 0.1, 10)
    save(model(
        [helper.make_node("Conv", ["input", "C1", "C1b"], ["c1"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
         helper.make_node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"], epsilon=1e-3),
         helper.make_node("Relu", ["bn"], ["r1"]),
         helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
         helper.make_node("Conv", ["p1", "C2", "C2b"], ["c2"], strides=[2, 2], kernel_shape=[3, 3]),
         helper.make_node("Relu", ["c2"], ["r2"]),
         helper.make_node("Shape", ["r2"], ["shape"]),
         helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
         helper.make_node("Unsqueeze", ["batch", "axes0"], ["batch1"]),
         helper.make_node("Concat", ["batch1", "minus1"], ["newshape"], axis=0),
         helper.make_node("Reshape", ["r2", "newshape"], ["flat"]),
         helper.make_node("Gemm", ["flat", "FC", "FCb"], ["logits"], transB=1)],
        [vi("input", ["N", 1, 28, 28])], [vi("logits", ["N", 10])],
        [t("C1", c1), t("C1b", c1b), t("bn_s", rng.uniform(0.5, 1.5, 4)), t("bn_b", rng.normal(0, 0.1, 4)),
         t("bn_m", rng.normal(0, 0.2, 4)), t("bn_v", rng.uniform(0.5, 2, 4)), t("C2", c2), t("C2b", c2b),
         t("FC", fc), t("FCb", fcb),
         numpy_helper.from_array(np.array(0, np.int64), "zero"),
         numpy_helper.from_array(np.array([0], np.int64), "axes0"),
         numpy_helper.from_array(np.array([-1], np.int64), "minus1")], 13), "cnn_bn.onnx")

    # cnn_fixed_batch.onnx: like mnist-8, input [1,1,28,28], Reshape to [1, K], opset 8, IR 3.
    k1 = rng.normal(0, 0.5, (4, 1, 5, 5)); mm = rng.normal(0, 0.1, (4 * 12 * 12, 10)); mb = rng.normal(0, 0.1, (1, 10))
    save(model(
        [helper.make_node("Conv", ["Input3", "K1"], ["c"], kernel_shape=[5, 5]),
         helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
         helper.make_node("Reshape", ["p", "shape"], ["flat"]),
         helper.make_node("MatMul", ["flat", "MM"], ["m"]),
         helper.make_node("Add", ["m", "MB"], ["out"])],
        [vi("Input3", [1, 1, 28, 28])], [vi("out", [1, 10])],
        [t("K1", k1), t("MM", mm), t("MB", mb),
         numpy_helper.from_array(np.array([1, 4 * 12 * 12], np.int64), "shape")], 8, ir=3), "cnn_fixed_batch.onnx")

    # unsupported_op.onnx: Hardmax in the middle (runs in onnxruntime, not in harden's list).
    wv = rng.normal(0, 1, (4, 3))
    save(model(
        [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Hardmax", ["m"], ["h"], axis=1, name="the_hardmax"),
         helper.make_node("Add", ["h", "m"], ["logits"])],
        [vi("x", ["N", 4])], [vi("logits", ["N", 3])], [t("W", wv)], 13), "unsupported_op.onnx")

    # vector3.onnx: [N,3] -> Gemm -> 3 classes.
    save(model([helper.make_node("Gemm", ["x", "W", "B"], ["logits"])],
               [vi("x", ["N", 3])], [vi("logits", ["N", 3])],
               [t("W", rng.normal(0, 1, (3, 3))), t("B", rng.normal(0, 0.1, 3))], 13), "vector3.onnx")

    # nhwc_cnn.onnx: input [N,8,8,3], Transpose to NCHW, Conv/Relu/Flatten/Gemm -> 3 classes.
    save(model(
        [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
         helper.make_node("Conv", ["xt", "K", "Kb"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Flatten", ["r"], ["f"]),
         helper.make_node("Gemm", ["f", "W", "B"], ["logits"], transB=1)],
        [vi("x", ["N", 8, 8, 3])], [vi("logits", ["N", 3])],
        [t("K", rng.normal(0, 0.5, (4, 3, 3, 3))), t("Kb", rng.normal(0, 0.1, 4)),
         t("W", rng.normal(0, 0.1, (3, 4 * 8 * 8))), t("B", rng.normal(0, 0.1, 3))], 13), "nhwc_cnn.onnx")

    # External data: the mlp with its tensors in a sibling file; a missing file; an escaping path.
    ext = onnx.load(os.path.join(OUT, "mlp.onnx"))
    # onnx appends to an existing external-data file: remove it so re-runs give the same bytes.
    if os.path.exists(os.path.join(OUT, "external_data.weights")):
        os.remove(os.path.join(OUT, "external_data.weights"))
    onnx.save_model(ext, os.path.join(OUT, "external_data.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="external_data.weights", size_threshold=0)
    for name, loc in (("external_missing.onnx", "missing.weights"), ("external_escape.onnx", "../../etc/passwd")):
        m = onnx.load(os.path.join(OUT, "mlp.onnx"))
        init = m.graph.initializer[0]
        init.ClearField("raw_data")
        init.ClearField("float_data")
        init.data_location = TensorProto.EXTERNAL
        del init.external_data[:]
        for k, v in (("location", loc), ("offset", "0"), ("length", str(784 * 32 * 4))):
            e = init.external_data.add(); e.key = k; e.value = v
        onnx.save(m, os.path.join(OUT, name))

    raw = open(os.path.join(OUT, "mlp.onnx"), "rb").read()
    open(os.path.join(OUT, "truncated.onnx"), "wb").write(raw[: int(len(raw) * 0.6)])
    open(os.path.join(OUT, "not_onnx.onnx"), "w").write("this is not an ONNX model\njust some text\n")

    # Data fixtures.
    x20, y20 = xte[:20], yte[:20]
    np.savez(os.path.join(DATA, "tiny.npz"), x=x20, y=y20)
    np.save(os.path.join(DATA, "tiny_x.npy"), x20)
    np.save(os.path.join(DATA, "tiny_images.npy"), x20.reshape(20, 28, 28))
    bad = y20.copy(); bad[3] = 12
    np.savez(os.path.join(DATA, "bad_labels.npz"), x=x20, y=bad)
    xn = x20.copy(); xn[2, 100] = np.nan
    np.savez(os.path.join(DATA, "nan.npz"), x=xn, y=y20)
    np.savez(os.path.join(DATA, "wrong_shape.npz"), x=x20[:5, :100], y=y20[:5])
    u8 = (x20.reshape(20, 28, 28) * 255).round().astype(np.uint8)
    with open(os.path.join(DATA, "tiny-images-idx3-ubyte"), "wb") as f:
        f.write(struct.pack(">IIII", 0x803, 20, 28, 28) + u8.tobytes())
    with open(os.path.join(DATA, "tiny-labels-idx1-ubyte"), "wb") as f:
        f.write(struct.pack(">II", 0x801, 20) + y20.astype(np.uint8).tobytes())
    try:
        from PIL import Image
        for c in range(3):
            d = os.path.join(DATA, "imgs", str(c)); os.makedirs(d, exist_ok=True)
            idx = [i for i in range(1000) if yte[i] == c][:3]
            for j, i in enumerate(idx):
                img = Image.fromarray((xte[i].reshape(28, 28) * 255).round().astype(np.uint8), "L")
                img.save(os.path.join(d, f"img{j}.png" if j < 2 else f"img{j}.jpg"))
    except ImportError:
        print("PIL missing: image folder fixture not written")

    # Expected onnxruntime logits on fixed inputs.
    expected = {}
    inputs = {
        "mlp.onnx": x20[:3], "mlp_matmul.onnx": x20[:3], "external_data.onnx": x20[:3],
        "cnn_bn.onnx": x20[:3].reshape(3, 1, 28, 28), "cnn_fixed_batch.onnx": x20[:1].reshape(1, 1, 28, 28),
        "vector3.onnx": rng.uniform(0, 1, (3, 3)).astype(np.float32),
        "nhwc_cnn.onnx": rng.uniform(0, 1, (3, 8, 8, 3)).astype(np.float32),
        "unsupported_op.onnx": rng.uniform(0, 1, (3, 4)).astype(np.float32),
    }
    for name, x in inputs.items():
        s = ort.InferenceSession(os.path.join(OUT, name), providers=["CPUExecutionProvider"])
        y = s.run(None, {s.get_inputs()[0].name: x})[0]
        expected[name] = {"input_shape": list(x.shape), "input": x.ravel().tolist(),
                          "output_shape": list(y.shape), "output": y.ravel().tolist()}
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
