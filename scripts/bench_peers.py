#!/usr/bin/env python3
"""The Python adversarial-robustness libraries on the benchmark networks: CleverHans,
Foolbox and IBM ART, each on its TensorFlow 2 backend, on the same Keras network with the
same weights as scripts/bench_tf.py (rebuilt by make_demo_model.py / make_wong_model.py).

Usage: python scripts/bench_peers.py [--net demo|wong] [--tools cleverhans,foolbox,art]
           [--work pgd10,train-pgd7,train-fast,standard] [--images 1024]
           [--train-images 60000] [--audit-images 1000] [--batch 128] [--threads 2] [--reps 3]
Each (tool, work) runs in a fresh subprocess of this script (so its peak RSS is its own)
and prints one JSON line: {"tool", "net", "work", "images", "images_per_s", "peak_rss_mb",
"settings"}; a (tool, work) the library does not offer on TensorFlow prints
"images_per_s": null and a "note" saying why. `--one TOOL:WORK` runs one item in this
process (what the subprocesses do).

Work items (all Linf, eps 0.1, batch 128, 2 threads, Fashion-MNIST):
  pgd10       PGD-10 on --images test images, step 2.5 eps / 10, random start; best of
              --reps passes after a warm-up batch. CleverHans tf2
              projected_gradient_descent, Foolbox LinfPGD, ART ProjectedGradientDescent.
  train-pgd7  one epoch of Madry PGD-7 adversarial training (step 2.5 eps / 7, random
              start, all of each batch adversarial, Adam 1e-3) on --train-images: ART
              AdversarialTrainerMadryPGD; timed after a one-batch warm-up.
  train-fast  one epoch of FGSM-RS ("fast", Wong et al. 2020): ART only has it for
              PyTorch (AdversarialTrainerFBFPyTorch), so it reports not available.
  standard    harden's `standard` audit on --audit-images test images: APGD-CE (100
              steps), APGD-T (DLR, 100 steps, the 9 other classes as targets) and Square
              (5,000 queries) in a cascade, each on the examples the previous ones left
              robust. ART attacks (AutoProjectedGradientDescent, SquareAttack); the cascade
              is run here, see `standard()` for why not art's AutoAttack class.
Needs the virtualenv made by scripts/setup-peers.sh (default /tmp/peervenv).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

TOOLS = ("cleverhans", "foolbox", "art")
WORKS = ("pgd10", "train-pgd7", "train-fast", "standard")
# What each library offers on TensorFlow 2, per work item (None: offered).
NOT_OFFERED = {
    ("cleverhans", "train-pgd7"): "CleverHans 4 has attacks only, no adversarial trainer",
    ("cleverhans", "train-fast"): "CleverHans 4 has attacks only, no adversarial trainer",
    ("cleverhans", "standard"): "CleverHans 4 has no APGD or Square attack",
    ("foolbox", "train-pgd7"): "Foolbox 3 has attacks only, no adversarial trainer",
    ("foolbox", "train-fast"): "Foolbox 3 has attacks only, no adversarial trainer",
    ("foolbox", "standard"): "Foolbox 3 has no APGD or Square attack",
    ("art", "train-fast"): "not available in ART for TF: ART 1.20's fast (FGSM-RS) trainer "
                           "is AdversarialTrainerFBFPyTorch only",
}


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def need(module):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        sys.exit(f"bench_peers.py: Python module '{module}' is missing; run scripts/setup-peers.sh "
                 f"and use its virtualenv's python")


def setup(args):
    """TensorFlow with the thread settings, the data, the Keras network with its weights."""
    need("numpy")
    tf = need("tensorflow")
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from bench_tf import load_net, read_idx
    return tf, read_idx, (lambda: load_net(tf, args.net))


def data(args, read_idx, split, n):
    import numpy as np
    prefix = "train" if split == "train" else "t10k"
    x = read_idx(os.path.join(args.data, f"{prefix}-images-idx3-ubyte.gz"))[:n]
    y = read_idx(os.path.join(args.data, f"{prefix}-labels-idx1-ubyte.gz"))[:n].astype(np.int64)
    return (x.astype(np.float32) / 255.0)[..., None], y


def art_classifier(tf, model, with_optimizer=False):
    need("art")
    from art.estimators.classification import TensorFlowV2Classifier
    kw = {}
    if with_optimizer:
        opt = tf.keras.optimizers.Adam(1e-3)
        loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        # ART's documented way to train a TF2 model: a compiled train_step (without it,
        # ART's fit() defines and traces a new tf.function on every call, i.e. every batch
        # of adversarial training).
        @tf.function
        def train_step(net, images, labels):
            with tf.GradientTape() as tape:
                l = loss(labels, net(images, training=True))
            grads = tape.gradient(l, net.trainable_variables)
            opt.apply_gradients(zip(grads, net.trainable_variables))

        kw = {"optimizer": opt, "train_step": train_step}
    return TensorFlowV2Classifier(
        model, nb_classes=10, input_shape=(28, 28, 1),
        loss_object=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        clip_values=(0.0, 1.0), **kw)


def pgd10(tool, args):
    import numpy as np
    tf, read_idx, net = setup(args)
    x, y = data(args, read_idx, "test", args.images)
    model = net()
    eps, steps = args.eps, 10
    step = 2.5 * eps / steps
    b = args.batch
    if tool == "cleverhans":
        need("cleverhans")
        from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

        def attack(xb, yb):
            return projected_gradient_descent(
                model, tf.constant(xb), eps, step, steps, np.inf, clip_min=0.0, clip_max=1.0,
                y=tf.constant(yb), rand_init=True).numpy()
        settings = "cleverhans.tf2 projected_gradient_descent(eps_iter=%.4g, nb_iter=10, norm=inf, rand_init=True, " \
                   "clip 0..1, y=labels); eager loop, tf.function gradient" % step
    elif tool == "foolbox":
        fb = need("foolbox")
        fmodel = fb.TensorFlowModel(model, bounds=(0.0, 1.0))
        fattack = fb.attacks.LinfPGD(abs_stepsize=step, steps=steps, random_start=True)

        def attack(xb, yb):
            _, clipped, _ = fattack(fmodel, tf.constant(xb), tf.constant(yb), epsilons=eps)
            return clipped.numpy()
        settings = "foolbox LinfPGD(abs_stepsize=%.4g, steps=10, random_start=True), TensorFlowModel bounds 0..1" % step
    else:
        clf = art_classifier(tf, model)
        from art.attacks.evasion import ProjectedGradientDescent
        aattack = ProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=step, max_iter=steps,
                                           num_random_init=1, batch_size=b, verbose=False)

        def attack(xb, yb):
            return aattack.generate(xb, y=yb)
        settings = "art ProjectedGradientDescent(eps_step=%.4g, max_iter=10, num_random_init=1, batch_size=%d), " \
                   "TensorFlowV2Classifier" % (step, b)
    attack(x[:b], y[:b])  # warm-up: tracing, first runs
    best, robust = float("inf"), 0
    for _ in range(args.reps):
        t0 = time.perf_counter()
        xa = np.concatenate([attack(x[i:i + b], y[i:i + b]) for i in range(0, len(x), b)])
        best = min(best, time.perf_counter() - t0)
        pred = np.concatenate([model(xa[i:i + 500], training=False).numpy().argmax(1)
                               for i in range(0, len(xa), 500)])
        assert np.abs(xa - x).max() <= eps + 1e-5 and xa.min() >= 0.0 and xa.max() <= 1.0
        robust = int((pred == y).sum())
    return {"images": len(x), "images_per_s": len(x) / best, "not_broken": robust, "settings": settings}


def train_pgd7(tool, args):
    import numpy as np
    tf, read_idx, net = setup(args)
    x, y = data(args, read_idx, "train", args.train_images)
    need("art")
    from art.defences.trainer import AdversarialTrainerMadryPGD
    clf = art_classifier(tf, net(), with_optimizer=True)
    eps, b = args.eps, args.batch
    trainer = AdversarialTrainerMadryPGD(clf, nb_epochs=1, batch_size=b, eps=eps, eps_step=2.5 * eps / 7,
                                         max_iter=7, num_random_init=1)
    # The trainer's PGD attack crafts in batches of 32 (ProjectedGradientDescent's default);
    # set to the training batch so every tool attacks 128 images per call.
    trainer.attack.set_params(batch_size=b, verbose=False)
    np.random.seed(0)
    trainer.fit(x[:b], y[:b])  # warm-up: tracing, first runs
    t0 = time.perf_counter()
    trainer.fit(x, y)
    secs = time.perf_counter() - t0
    return {"images": len(x), "images_per_s": len(x) / secs,
            "settings": "art AdversarialTrainerMadryPGD(nb_epochs=1, batch_size=%d, eps=%g, eps_step=%.4g, "
                        "max_iter=7, num_random_init=1; ratio 1.0: the whole batch adversarial), attack "
                        "batch_size %d (ART default 32), Adam 1e-3 through a tf.function train_step, "
                        "attack on the model in inference mode" % (b, eps, 2.5 * eps / 7, b)}


def standard(tool, args):
    """harden's `standard` cascade with ART's attacks. art's AutoAttack class is not used:
    with targeted=True it runs every attack of its list both untargeted and against every
    target (APGD-CE and Square too), which is not the APGD-CE, APGD-T, Square work of
    harden (or of Croce & Hein's AutoAttack); its default list (APGD-CE, APGD-DLR, DeepFool,
    Square with 5 restarts each) differs too. The cascade here uses the same per-attack
    bookkeeping as art.attacks.evasion.auto_attack.run_attack (attack the still-robust
    examples, keep successes inside the eps-ball), counting a success as any
    misclassification of the true label."""
    import numpy as np
    tf, read_idx, net = setup(args)
    x, y = data(args, read_idx, "test", args.audit_images)
    model = net()
    clf = art_classifier(tf, model)
    from art.attacks.evasion import AutoProjectedGradientDescent, SquareAttack
    eps, b = args.eps, args.batch
    t0 = time.perf_counter()
    logits = clf.predict(x, batch_size=b)
    robust = logits.argmax(1) == y
    clean = int(robust.sum())
    per_attack = {}

    def run(attack, xs, targets):
        xa = attack.generate(xs, y=targets)
        pred = clf.predict(xa, batch_size=b).argmax(1)
        return np.abs(xa - xs).reshape(len(xs), -1).max(1) <= eps * (1 + 1e-4), pred

    # APGD-CE, untargeted.
    apgd_ce = AutoProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=100,
                                           targeted=False, nb_random_init=1, batch_size=b,
                                           loss_type="cross_entropy", verbose=False)
    idx = np.flatnonzero(robust)
    if len(idx):
        inside, pred = run(apgd_ce, x[idx], np.eye(10, dtype=np.float32)[y[idx]])
        robust[idx[inside & (pred != y[idx])]] = False
    per_attack["apgd-ce"] = int(robust.sum())
    # APGD-T: DLR loss towards each of the 9 other classes, highest clean logit first
    # (the examples still robust are clean-correct: their top class is the label).
    apgd_t = AutoProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=100,
                                          targeted=True, nb_random_init=1, batch_size=b,
                                          loss_type="difference_logits_ratio", verbose=False)
    order = np.argsort(-logits, axis=1)
    for k in range(1, 10):
        idx = np.flatnonzero(robust)
        if not len(idx):
            break
        target = order[idx, k]
        inside, pred = run(apgd_t, x[idx], np.eye(10, dtype=np.float32)[target])
        robust[idx[inside & (pred != y[idx])]] = False
    per_attack["apgd-t"] = int(robust.sum())
    # Square, untargeted, 5,000 queries.
    square = SquareAttack(clf, norm=np.inf, eps=eps, max_iter=5000, p_init=0.8, nb_restarts=1,
                          batch_size=b, verbose=False)
    idx = np.flatnonzero(robust)
    if len(idx):
        inside, pred = run(square, x[idx], np.eye(10, dtype=np.float32)[y[idx]])
        robust[idx[inside & (pred != y[idx])]] = False
    per_attack["square"] = int(robust.sum())
    secs = time.perf_counter() - t0
    return {"images": len(x), "images_per_s": len(x) / secs, "clean_correct": clean,
            "robust_after": per_attack,
            "settings": "art AutoProjectedGradientDescent(eps_step=2 eps, max_iter=100, nb_random_init=1, "
                        "batch_size=%d; loss cross_entropy untargeted, then difference_logits_ratio "
                        "targeted x 9 targets), SquareAttack(max_iter=5000, p_init=0.8, nb_restarts=1); "
                        "cascade; ART's targeted DLR is its untargeted DLR formula descended towards the "
                        "target, not Croce & Hein's targeted DLR; time includes the clean pass" % b}


def one(tool, work, args):
    if (tool, work) in NOT_OFFERED:
        r = {"images_per_s": None, "note": NOT_OFFERED[(tool, work)]}
    else:
        r = {"pgd10": pgd10, "train-pgd7": train_pgd7, "standard": standard}[work](tool, args)
        r["images_per_s"] = round(r["images_per_s"], 1)
    out = {"tool": tool, "net": args.net, "work": work, "batch": args.batch, "threads": args.threads}
    out.update(r)
    out["peak_rss_mb"] = round(peak_rss_mb(), 1) if r["images_per_s"] is not None else None
    print(json.dumps(out), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--net", choices=("demo", "wong"), default="demo")
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--work", default=",".join(WORKS))
    ap.add_argument("--one", help="TOOL:WORK, run in this process")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--train-images", type=int, default=60000)
    ap.add_argument("--audit-images", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--eps", type=float, default=0.1)
    args = ap.parse_args()
    if args.one:
        tool, _, work = args.one.partition(":")
        if tool not in TOOLS or work not in WORKS:
            sys.exit(f"bench_peers.py: --one wants TOOL:WORK with TOOL in {TOOLS} and WORK in {WORKS}")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        one(tool, work, args)
        return 0
    for name, allowed in (("--tools", TOOLS), ("--work", WORKS)):
        for v in getattr(args, "tools" if name == "--tools" else "work").split(","):
            if v not in allowed:
                sys.exit(f"bench_peers.py: {name}: unknown '{v}' (known: {', '.join(allowed)})")
    status = 0
    for work in args.work.split(","):
        for tool in args.tools.split(","):
            cmd = [sys.executable, os.path.abspath(__file__), "--one", f"{tool}:{work}"]
            for k in ("net", "data", "images", "train_images", "audit_images", "batch", "threads", "reps", "eps"):
                cmd += ["--" + k.replace("_", "-"), str(getattr(args, k))]
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
            p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
            if p.returncode != 0 or not lines:
                err = (p.stderr.strip().splitlines() or ["no output"])[-1]
                print(json.dumps({"tool": tool, "net": args.net, "work": work, "images_per_s": None,
                                  "error": err}), flush=True)
                status = 1
            else:
                print(lines[-1], flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
