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

import numpy as np

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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(ROOT, "models"))
    args = ap.parse_args()

    os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")
    import tensorflow as tf
    import tf2onnx
    import onnx
    import onnxruntime as ort

    random.seed(args.seed)
    np.random.seed(args.seed)
    tf.random.set_seed(args.seed)
    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    x_train, y_train = load(args.data, "train")
    x_test, y_test = load(args.data, "test")
    model = build(tf)
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
    onnx_path = os.path.join(args.out, "fmnist_cnn.onnx")
    spec = (tf.TensorSpec((None, 28, 28, 1), tf.float32, name="input"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=13)
    proto.producer_name = "tf2onnx"
    onnx.checker.check_model(proto)
    tmp = onnx_path + ".tmp"
    onnx.save(proto, tmp)
    os.replace(tmp, onnx_path)
    model.save_weights(os.path.join(args.out, "fmnist_cnn.weights.h5"))

    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    ort_logits = np.concatenate([sess.run(None, {name: x_test[i:i + 500]})[0] for i in range(0, 10000, 500)])
    ort_correct = int((ort_logits.argmax(1) == y_test).sum())
    print(f"onnxruntime test accuracy: {ort_correct}/10000 = {ort_correct / 100:.2f}%")
    print(f"max |logit difference| tensorflow vs onnxruntime: {np.abs(ort_logits - logits).max():.2e}")

    sha = hashlib.sha256(open(onnx_path, "rb").read()).hexdigest()
    meta = {
        "file": "fmnist_cnn.onnx",
        "sha256": sha,
        "framework": f"tensorflow {tf.__version__}",
        "exporter": f"tf2onnx {tf2onnx.__version__}",
        "opset": 13,
        "seed": args.seed,
        "epochs": args.epochs,
        "framework_test_correct": tf_correct,
        "onnxruntime_test_correct": ort_correct,
        "framework_test_total": 10000,
        "onnxruntime_test_total": 10000,
        "test_total": 10000,
        "input_name": name,
        "input_layout": "nhwc",
        "input_range": [0, 1],
        "output": "logits",
    }
    with open(os.path.join(args.out, "fmnist_cnn.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    sys.exit(main())
