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
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from make_demo_model import parse_args, train_and_export  # noqa: E402  (shared with the demo model)

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


def conv_attributes(proto):
    """The exported Conv nodes' attributes (pads, strides, ...), for the provenance JSON."""
    import onnx
    convs = [dict((a.name, onnx.helper.get_attribute_value(a)) for a in n.attribute)
             for n in proto.graph.node if n.op_type == "Conv"]
    return [{k: (v.decode() if isinstance(v, bytes) else v) for k, v in c.items()} for c in convs]


def main():
    train_and_export(
        NAME,
        build,
        parse_args(default_epochs=5),
        extra_meta=lambda proto: {
            "architecture": "Wong et al. 2020 MNIST CNN: Conv16 4x4/2 pad 1 (Keras 'same'), ReLU, "
                            "Conv32 4x4/2 pad 1 (Keras 'same'), ReLU, Flatten, Dense100, ReLU, Dense10",
            "onnx_conv_attributes": conv_attributes(proto),
        },
        record_max_diff=True,
    )


if __name__ == "__main__":
    sys.exit(main())
