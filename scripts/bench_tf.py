#!/usr/bin/env python3
"""The benchmark networks in their source framework (TensorFlow/Keras), driven by
hand-written compiled (tf.function) loops: the speed a skilled user gets by hand.

Usage: python scripts/bench_tf.py [--net demo|wong] [--images 1024] [--batch 128] [--threads 2]
                                 [--work pgd10,clean,train-pgd7,train-fast] [--train-images 60000]
--net: demo (models/fmnist_cnn, scripts/make_demo_model.py) or wong (models/wong_cnn, the
MNIST CNN of Wong et al. 2020, scripts/make_wong_model.py); the Keras network is rebuilt by
its script's build() and loads its committed weights.
Work items: pgd10 (PGD-10 Linf attack on test images), clean (forward), train-pgd7 (one
epoch of Madry PGD-7 adversarial training with Adam, model in inference mode for the
attack) and train-fast (one epoch of FGSM-RS "fast" training, Wong et al. 2020) on training
images.
Prints one JSON line per work item: {"tool": "tensorflow-handwritten", "net": ..., "work": ...,
"images_per_s": ...}.
Needs the virtualenv described in models/PROVENANCE.md (tensorflow-cpu 2.15.1).
"""
import argparse
import gzip
import json
import os
import struct
import sys
import time

try:
    import numpy as np
except ImportError:
    sys.exit("bench_tf.py: numpy is missing; use the virtualenv of models/PROVENANCE.md")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

# --net: (module whose build(tf) makes the Keras network, its weights file in models/)
NETS = {"demo": ("make_demo_model", "fmnist_cnn.weights.h5"),
        "wong": ("make_wong_model", "wong_cnn.weights.h5")}


def load_net(tf, net):
    """The Keras network `net` with its committed weights."""
    import importlib
    module, weights = NETS[net]
    model = importlib.import_module(module).build(tf)
    model.load_weights(os.path.join(ROOT, "models", weights))
    return model


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--net", choices=sorted(NETS), default="demo")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--work", default="pgd10,clean")
    ap.add_argument("--train-images", type=int, default=60000)
    args = ap.parse_args()

    try:
        import tensorflow as tf
    except ImportError:
        sys.exit("bench_tf.py: tensorflow is missing; use the virtualenv of models/PROVENANCE.md")

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    model = load_net(tf, args.net)
    x = read_idx(os.path.join(args.data, "t10k-images-idx3-ubyte.gz"))[: args.images]
    y = read_idx(os.path.join(args.data, "t10k-labels-idx1-ubyte.gz"))[: args.images].astype(np.int64)
    x = (x.astype(np.float32) / 255.0)[..., None]
    batches = [(tf.constant(x[i:i + args.batch]), tf.constant(y[i:i + args.batch]))
               for i in range(0, len(x), args.batch)]
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")
    eps, alpha, steps = args.eps, 2.5 * args.eps / args.steps, args.steps

    @tf.function(jit_compile=False)
    def pgd(xb, yb):
        xa = tf.clip_by_value(xb + tf.random.uniform(tf.shape(xb), -eps, eps), 0.0, 1.0)
        for _ in range(steps):
            with tf.GradientTape() as tape:
                tape.watch(xa)
                loss = loss_fn(yb, model(xa, training=False))
            g = tape.gradient(loss, xa)
            xa = xa + alpha * tf.sign(g)
            xa = tf.clip_by_value(tf.clip_by_value(xa, xb - eps, xb + eps), 0.0, 1.0)
        return xa

    @tf.function
    def clean(xb):
        return model(xb, training=False)

    def timed(fn):
        fn(*batches[0]) if fn is pgd else fn(batches[0][0])  # trace and warm up
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for xb, yb in batches:
                out = fn(xb, yb) if fn is pgd else fn(xb)
            _ = out.numpy()
            best = min(best, time.perf_counter() - t0)
        return len(x) / best

    def train_epoch(work):
        xt = read_idx(os.path.join(args.data, "train-images-idx3-ubyte.gz"))[: args.train_images]
        yt = read_idx(os.path.join(args.data, "train-labels-idx1-ubyte.gz"))[: args.train_images]
        xt = (xt.astype(np.float32) / 255.0)[..., None]
        yt = yt.astype(np.int64)
        net = load_net(tf, args.net)
        opt = tf.keras.optimizers.Adam(1e-3)
        mean_loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        k, a = (1, 1.25 * eps) if work == "train-fast" else (7, 2.5 * eps / 7)

        @tf.function
        def step(xb, yb):
            xa = tf.clip_by_value(xb + tf.random.uniform(tf.shape(xb), -eps, eps), 0.0, 1.0)
            for _ in range(k):
                with tf.GradientTape() as tape:
                    tape.watch(xa)
                    loss = loss_fn(yb, net(xa, training=False))
                g = tape.gradient(loss, xa)
                xa = xa + a * tf.sign(g)
                xa = tf.clip_by_value(tf.clip_by_value(xa, xb - eps, xb + eps), 0.0, 1.0)
            with tf.GradientTape() as tape:
                loss = mean_loss(yb, net(xa, training=True))
            grads = tape.gradient(loss, net.trainable_variables)
            opt.apply_gradients(zip(grads, net.trainable_variables))
            return loss

        rng = np.random.default_rng(0)
        order = rng.permutation(len(xt))
        nb = len(xt) // args.batch
        step(tf.constant(xt[:args.batch]), tf.constant(yt[:args.batch]))  # trace, warm up
        t0 = time.perf_counter()
        for b in range(nb):
            idx = order[b * args.batch:(b + 1) * args.batch]
            loss = step(tf.constant(xt[idx]), tf.constant(yt[idx]))
        _ = loss.numpy()
        return nb * args.batch / (time.perf_counter() - t0), nb * args.batch

    for work in args.work.split(","):
        if work.startswith("train-"):
            ips, n = train_epoch(work)
            print(json.dumps({"tool": "tensorflow-handwritten", "net": args.net, "work": work, "images": n,
                              "batch": args.batch, "threads": args.threads,
                              "images_per_s": round(ips, 1)}))
            continue
        ips = timed(pgd if work == "pgd10" else clean)
        print(json.dumps({"tool": "tensorflow-handwritten", "net": args.net, "work": work, "images": len(x),
                          "batch": args.batch, "threads": args.threads, "images_per_s": round(ips, 1)}))


if __name__ == "__main__":
    main()
