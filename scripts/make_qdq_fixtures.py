"""Makes the INT8 fixtures in fixtures/qdq/ (see fixtures/qdq/README.md).

    /work/pyenv/bin/python scripts/make_qdq_fixtures.py [FASHION_MNIST_DIR]

FASHION_MNIST_DIR holds the gzipped IDX files (default /usr/share/datasets/fashion-mnist,
Debian package dataset-fashion-mnist). Calibration reads the first 300 training images;
the reference logits are ONNX Runtime's (Python) on the first 8 images of
fixtures/data/tiny.npz (the demo models) or on the inputs stored in
fixtures/arch/resnet_basic.npz (the ResNet): `NAME` with ONNX Runtime's default graph
optimizations (its fused integer QDQ kernels, what a deployment runs) and `NAME_spec`
with them off (each op as the ONNX spec defines it, in float between Q/DQ nodes). Quantization is deterministic given the
calibration data (MinMax calibration), so re-runs give the same weights.
"""

import gzip
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fixtures", "qdq")
DEMO = os.path.join(ROOT, "models", "fmnist_cnn.onnx")
RESNET = os.path.join(ROOT, "fixtures", "arch", "resnet_basic.legacy.onnx")


def idx_images(path, n):
    with gzip.open(path, "rb") as f:
        data = f.read()
    count, rows, cols = np.frombuffer(data[4:16], dtype=">u4")
    x = np.frombuffer(data[16:], dtype=np.uint8)[: n * rows * cols]
    return x.reshape(n, rows, cols).astype(np.float32) / 255.0


class Reader(CalibrationDataReader):
    def __init__(self, name, batches):
        self.it = iter([{name: b} for b in batches])

    def get_next(self):
        return next(self.it, None)


def quantize(src, dst, name, batches, **kw):
    quantize_static(
        src,
        dst,
        Reader(name, batches),
        quant_format=kw.pop("quant_format", QuantFormat.QDQ),
        **kw,
    )
    m = onnx.load(dst)
    onnx.checker.check_model(m)
    return m


def ort_logits(path, x, optimize=True):
    so = onnxruntime.SessionOptions()
    if not optimize:
        so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = onnxruntime.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def main():
    fm = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist"
    os.makedirs(OUT, exist_ok=True)
    calib = idx_images(os.path.join(fm, "train-images-idx3-ubyte.gz"), 300)
    demo_batches = [calib[i : i + 50].reshape(-1, 28, 28, 1) for i in range(0, 300, 50)]
    tiny = np.load(os.path.join(ROOT, "fixtures", "data", "tiny.npz"))
    xd = tiny["x"][:8].reshape(-1, 28, 28, 1).astype(np.float32)
    meta = {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__, "models": {}}
    refs = {"demo_x": xd}

    made = []
    # The demo model, per-channel weights (int8), uint8 activations (QDQ).
    made.append(("fmnist_cnn_qdq", DEMO, "input", demo_batches, dict(
        per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)))
    # Per-tensor weights, int8 activations.
    made.append(("fmnist_cnn_qdq_tensor", DEMO, "input", demo_batches, dict(
        per_channel=False, weight_type=QuantType.QInt8, activation_type=QuantType.QInt8)))
    # The other format: QLinearConv/QLinearMatMul (refused by harden).
    made.append(("fmnist_cnn_qop", DEMO, "input", demo_batches[:1], dict(
        quant_format=QuantFormat.QOperator, per_channel=True,
        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)))
    # A small ResNet (torchvision BasicBlock), calibrated on random images in [0, 1).
    rng = np.random.default_rng(0)
    resnet_batches = [rng.random((16, 3, 32, 32), dtype=np.float32) for _ in range(4)]
    made.append(("resnet_basic_qdq", RESNET, "input", resnet_batches, dict(
        per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)))

    xr = np.load(os.path.join(ROOT, "fixtures", "arch", "resnet_basic.npz"))["x"].astype(np.float32)
    refs["resnet_x"] = xr
    for name, src, inp, batches, kw in made:
        dst = os.path.join(OUT, name + ".onnx")
        m = quantize(src, dst, inp, batches, **kw)
        x = xr if name.startswith("resnet") else xd
        if "qop" not in name:
            refs[name] = ort_logits(dst, x)
            # The ONNX semantics op by op (float DequantizeLinear, Conv, QuantizeLinear),
            # without ONNX Runtime's fused integer kernels: what tract computes.
            refs[name + "_spec"] = ort_logits(dst, x, optimize=False)
        ops = {}
        for n in m.graph.node:
            ops[n.op_type] = ops.get(n.op_type, 0) + 1
        meta["models"][name] = {
            "from": os.path.relpath(src, ROOT),
            "settings": {k: str(v) for k, v in kw.items()},
            "opset": [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")][0],
            "bytes": os.path.getsize(dst),
            "ops": ops,
        }

    # Hand-made small QDQ MLPs: one valid, one per bad-input case (tests/quantized.rs).
    w = rng.integers(-100, 100, size=(4, 3)).astype(np.int8)

    def tiny_qdq(path, x_scale=0.02, x_zp=(TensorProto.UINT8, 128), w_type=TensorProto.INT8,
                 w_scale=(0.01, 0.02, 0.03), drop_q=False, w_zp_vals=(0, 0, 0)):
        zp_type, zp_val = x_zp
        inits = [
            helper.make_tensor("x_scale", TensorProto.FLOAT, [], [x_scale]),
            # Built by hand: make_tensor refuses values outside the type (bad_zero_point).
            TensorProto(name="x_zp", data_type=zp_type, int32_data=[zp_val]),
            TensorProto(name="w_q", data_type=w_type, dims=[4, 3], int32_data=w.flatten().tolist()),
            helper.make_tensor("w_scale", TensorProto.FLOAT, [3], list(w_scale)),
            TensorProto(name="w_zp", data_type=w_type, dims=[3], int32_data=list(w_zp_vals)),
            numpy_helper.from_array(np.array([0.1, -0.2, 0.05], np.float32), "b"),
        ]
        nodes = []
        if drop_q:
            nodes.append(helper.make_node("Cast", ["x"], ["x_q"], to=zp_type))
        else:
            nodes.append(helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"]))
        nodes += [
            helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"]),
            helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], axis=1),
            helper.make_node("MatMul", ["x_dq", "w"], ["h"]),
            helper.make_node("Add", ["h", "b"], ["logits"]),
        ]
        g = helper.make_graph(
            nodes, "tiny_qdq",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
            inits)
        opset = 21 if w_type in (TensorProto.INT4, TensorProto.FLOAT8E4M3FN) else 13
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = 10 if opset == 21 else 8
        onnx.save(m, os.path.join(OUT, path))
        return m

    tiny_qdq("tiny_qdq.onnx")
    xt = rng.random((5, 4), dtype=np.float32)
    refs["tiny_x"] = xt
    refs["tiny_qdq"] = ort_logits(os.path.join(OUT, "tiny_qdq.onnx"), xt)
    refs["tiny_qdq_spec"] = ort_logits(os.path.join(OUT, "tiny_qdq.onnx"), xt, optimize=False)
    tiny_qdq("bad_zero_scale.onnx", w_scale=(0.01, 0.0, 0.03))
    tiny_qdq("bad_negative_scale.onnx", x_scale=-0.02)
    tiny_qdq("bad_zero_point.onnx", w_zp_vals=(0, 0, 0), x_zp=(TensorProto.UINT8, 300))
    tiny_qdq("bad_unpaired_dq.onnx", drop_q=True)
    tiny_qdq("bad_int4.onnx", w_type=TensorProto.INT4)

    np.savez(os.path.join(OUT, "reference.npz"), **refs)
    with open(os.path.join(OUT, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
