#!/usr/bin/env python3
"""Train the small MNIST CNN of Wong et al. 2020 ("Fast is better than free") in
TensorFlow/Keras on Fashion-MNIST and export it with tf2onnx: the benchmarks' second
network, small enough that framework overhead dominates.

Architecture: Conv 16 4x4 stride 2, ReLU, Conv 32 4x4 stride 2, ReLU, Flatten, Dense 100,
ReLU, Dense 10 (logits). Input NHWC [N,28,28,1] in [0,1]. The paper's convolutions use
padding 1; Keras has no explicit padding, and padding="same" is used instead: with a 4x4
kernel and stride 2 it pads (k - s) = 2 rows and columns, split 1 before and 1 after,
so on 28x28 (then 14x14) it is exactly padding 1 on every side (28 -> 14 -> 7, as in the
paper; Dense 100 sees 7*7*32 = 1,568 features, in Keras's HWC flatten order).
MNIST is not available offline: the network is trained on Fashion-MNIST.

Environment: the virtualenv of models/PROVENANCE.md (tensorflow-cpu 2.15.1, tf2onnx 1.16.1).
Run: python scripts/make_wong_model.py [--data /usr/share/datasets/fashion-mnist] [--epochs 5]
Writes models/wong_cnn.onnx, models/wong_cnn.weights.h5 (the Keras weights, for the
side-by-side benchmarks) and models/wong_cnn.json (accuracies, checksum).
`build(tf)` is importable: scripts/bench_tf.py and scripts/bench_peers.py rebuild the
Keras network with it and load the weights.
"""
import argparse
import hashlib
import json
import os
import random
import sys

try:
    import numpy as np
except ImportError:
    sys.exit("make_wong_model.py: numpy is missing; use the virtualenv of models/PROVENANCE.md")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from make_demo_model import load  # noqa: E402  (IDX reading, shared with the demo model)

NAME = "wong_cnn"


def build(tf):
    k = tf.keras
    return k.Sequential([
        k.layers.Input(shape=(28, 28, 1), name="input"),
        k.layers.Conv2D(16, 4, strides=2, padding="same", activation="relu"),
        k.layers.Conv2D(32, 4, strides=2, padding="same", activation="relu"),
        k.layers.Flatten(),
        k.layers.Dense(100, activation="relu"),
        k.layers.Dense(10),
    ])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(ROOT, "models"))
    args = ap.parse_args()

    os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")
    try:
        import tensorflow as tf
        import tf2onnx
        import onnx
        import onnxruntime as ort
    except ImportError as e:
        sys.exit(f"make_wong_model.py: {e.name} is missing; use the virtualenv of models/PROVENANCE.md")

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
    onnx_path = os.path.join(args.out, f"{NAME}.onnx")
    spec = (tf.TensorSpec((None, 28, 28, 1), tf.float32, name="input"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=13)
    proto.producer_name = "tf2onnx"
    onnx.checker.check_model(proto)
    tmp = onnx_path + ".tmp"
    onnx.save(proto, tmp)
    os.replace(tmp, onnx_path)
    model.save_weights(os.path.join(args.out, f"{NAME}.weights.h5"))

    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    ort_logits = np.concatenate([sess.run(None, {name: x_test[i:i + 500]})[0] for i in range(0, 10000, 500)])
    ort_correct = int((ort_logits.argmax(1) == y_test).sum())
    print(f"onnxruntime test accuracy: {ort_correct}/10000 = {ort_correct / 100:.2f}%")
    max_diff = float(np.abs(ort_logits - logits).max())
    print(f"max |logit difference| tensorflow vs onnxruntime: {max_diff:.2e}")

    conv_pads = [dict((a.name, onnx.helper.get_attribute_value(a)) for a in n.attribute)
                 for n in proto.graph.node if n.op_type == "Conv"]
    sha = hashlib.sha256(open(onnx_path, "rb").read()).hexdigest()
    meta = {
        "file": f"{NAME}.onnx",
        "sha256": sha,
        "framework": f"tensorflow {tf.__version__}",
        "exporter": f"tf2onnx {tf2onnx.__version__}",
        "opset": 13,
        "seed": args.seed,
        "epochs": args.epochs,
        "architecture": "Wong et al. 2020 MNIST CNN: Conv16 4x4/2 pad 1 (Keras 'same'), ReLU, "
                        "Conv32 4x4/2 pad 1 (Keras 'same'), ReLU, Flatten, Dense100, ReLU, Dense10",
        "onnx_conv_attributes": [{k: (v.decode() if isinstance(v, bytes) else v) for k, v in c.items()}
                                 for c in conv_pads],
        "framework_test_correct": tf_correct,
        "onnxruntime_test_correct": ort_correct,
        "framework_test_total": 10000,
        "onnxruntime_test_total": 10000,
        "test_total": 10000,
        "max_logit_difference_onnxruntime": max_diff,
        "input_name": name,
        "input_layout": "nhwc",
        "input_range": [0, 1],
        "output": "logits",
    }
    with open(os.path.join(args.out, f"{NAME}.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    sys.exit(main())
