#!/usr/bin/env bash
# Creates the virtualenv of the Python peers that scripts/bench_peers.py runs: CleverHans,
# Foolbox and IBM ART on TensorFlow 2 (the same Keras network and weights as
# scripts/bench_tf.py). Not part of CI: the benchmarks only.
# Usage: scripts/setup-peers.sh [VENV]      (default /tmp/peervenv; PYTHON picks the python)
set -euo pipefail
VENV="${1:-/tmp/peervenv}"
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip==24.0
# Pinned: the frameworks and the three libraries; the rest are what they need.
# tensorflow-probability 0.23 is the release for TF 2.15 (CleverHans lists it);
# multiprocess is imported by ART's AutoAttack module.
"$VENV/bin/pip" install --quiet \
  tensorflow-cpu==2.15.1 numpy==1.26.4 protobuf==4.25.3 \
  cleverhans==4.0.0 tensorflow-probability==0.23.0 \
  foolbox==3.3.4 eagerpy==0.30.0 \
  adversarial-robustness-toolbox==1.20.1 scipy==1.11.4 scikit-learn==1.4.2 multiprocess==0.70.16
"$VENV/bin/pip" freeze > "$VENV/requirements.lock"
"$VENV/bin/python" - <<'PY'
import importlib
for m in ("tensorflow", "cleverhans", "foolbox", "art"):
    mod = importlib.import_module(m)
    print(f"{m} {getattr(mod, '__version__', '?')}")
PY
echo "peers ready in $VENV (pip freeze in $VENV/requirements.lock)"
