#!/usr/bin/env python3
"""Train harden's demo Fashion-MNIST CNN in TensorFlow/Keras and export it with tf2onnx.

Architecture (named by the benchmarks): Conv 32 3x3 ReLU, MaxPool 2, Conv 64 3x3 ReLU,
MaxPool 2, Flatten, Dense 128 ReLU, Dense 10 (logits). Input NHWC [N,28,28,1] in [0,1].

Environment used (see models/PROVENANCE.md): a virtualenv outside the repository with
  pip install tensorflow-cpu==2.15.1 tf2onnx==1.16.1 onnx==1.15.0 protobuf==3.20.3 \
              onnxruntime==1.17.3 numpy==1.26.4
Run: python scripts/make_demo_model.py [--data /usr/share/datasets/fashion-mnist]
Writes models/fmnist_cnn.onnx, models/fmnist_cnn.weights.h5 (the Keras weights, for the
side-by-side benchmarks) and models/fmnist_cnn.json (accuracies, checksum).
"""
import argparse
import gzip
import hashlib
import json
import os
import random
import struct
import sys

try:
    import numpy as np
except ImportError:
    sys.exit(f"{os.path.basename(sys.argv[0])}: numpy is missing; use the virtualenv of models/PROVENANCE.md")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(data_dir, split):
    prefix = "train" if split == "train" else "t10k"
    x = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"))
    y = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"))
    return (x.astype(np.float32) / 255.0)[..., None], y.astype(np.int64)


def build(tf):
    k = tf.keras
    return k.Sequential([
        k.layers.Input(shape=(28, 28, 1), name="input"),
        k.layers.Conv2D(32, 3, activation="relu"),
        k.layers.MaxPooling2D(2),
        k.layers.Conv2D(64, 3, activation="relu"),
        k.layers.MaxPooling2D(2),
        k.layers.Flatten(),
        k.layers.Dense(128, activation="relu"),
        k.layers.Dense(10),
    ])


def parse_args(default_epochs):
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--epochs", type=int, default=default_epochs)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(ROOT, "models"))
    return ap.parse_args()


def train_and_export(name, build_fn, args, extra_meta=None, record_max_diff=False):
    """Trains `build_fn(tf)` on Fashion-MNIST (Adam 1e-3, batch 128, seeded), exports it with
    tf2onnx (opset 13, input `input`, NHWC) to OUT/NAME.onnx, and writes OUT/NAME.weights.h5
    and OUT/NAME.json. `extra_meta(onnx_proto)` gives keys placed after `epochs` in the JSON;
    `record_max_diff` adds the largest TensorFlow/ONNX Runtime logit difference."""
    os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")
    try:
        import tensorflow as tf
        import tf2onnx
        import onnx
        import onnxruntime as ort
    except ImportError as e:
        sys.exit(f"{os.path.basename(sys.argv[0])}: {e.name} is missing; use the virtualenv of models/PROVENANCE.md")

    random.seed(args.seed)
    np.random.seed(args.seed)
    tf.random.set_seed(args.seed)
    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    x_train, y_train = load(args.data, "train")
    x_test, y_test = load(args.data, "test")
    model = build_fn(tf)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(1e-3),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, batch_size=128, epochs=args.epochs, shuffle=True, verbose=2)

    logits = model.predict(x_test, batch_size=500, verbose=0)
    tf_correct = int((logits.argmax(1) == y_test).sum())
    print(f"tensorflow test accuracy: {tf_correct}/10000 = {tf_correct / 100:.2f}%")

    os.makedirs(args.out, exist_ok=True)
    onnx_path = os.path.join(args.out, f"{name}.onnx")
    spec = (tf.TensorSpec((None, 28, 28, 1), tf.float32, name="input"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=13)
    proto.producer_name = "tf2onnx"
    onnx.checker.check_model(proto)
    tmp = onnx_path + ".tmp"
    onnx.save(proto, tmp)
    os.replace(tmp, onnx_path)
    model.save_weights(os.path.join(args.out, f"{name}.weights.h5"))

    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    input_name = sess.get_inputs()[0].name
    ort_logits = np.concatenate([sess.run(None, {input_name: x_test[i:i + 500]})[0] for i in range(0, 10000, 500)])
    ort_correct = int((ort_logits.argmax(1) == y_test).sum())
    print(f"onnxruntime test accuracy: {ort_correct}/10000 = {ort_correct / 100:.2f}%")
    max_diff = float(np.abs(ort_logits - logits).max())
    print(f"max |logit difference| tensorflow vs onnxruntime: {max_diff:.2e}")

    sha = hashlib.sha256(open(onnx_path, "rb").read()).hexdigest()
    meta = {
        "file": f"{name}.onnx",
        "sha256": sha,
        "framework": f"tensorflow {tf.__version__}",
        "exporter": f"tf2onnx {tf2onnx.__version__}",
        "opset": 13,
        "seed": args.seed,
        "epochs": args.epochs,
    }
    if extra_meta is not None:
        meta.update(extra_meta(proto))
    meta.update({
        "framework_test_correct": tf_correct,
        "onnxruntime_test_correct": ort_correct,
        "framework_test_total": 10000,
        "onnxruntime_test_total": 10000,
        "test_total": 10000,
    })
    if record_max_diff:
        meta["max_logit_difference_onnxruntime"] = max_diff
    meta.update({
        "input_name": input_name,
        "input_layout": "nhwc",
        "input_range": [0, 1],
        "output": "logits",
    })
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print(json.dumps(meta, indent=2))


def main():
    train_and_export("fmnist_cnn", build, parse_args(default_epochs=8))


if __name__ == "__main__":
    sys.exit(main())
