#!/usr/bin/env bash
# Create (or refresh) .bench-venv-trees for benchmarks/trees_bench.py, idempotently.
#
# Peers: adversarial-robustness-toolbox 1.20.x (DecisionTreeAttack, HopSkipJump, ZOO on its
# XGBoost/LightGBM/scikit-learn wrappers) and dtai-veritas (a tree-ensemble verifier). ART needs
# no torch for these attacks. bastion is installed editable without dependencies; the
# benchmark imports only numpy/scipy/scikit-learn/xgboost/lightgbm/pandas parts of it.
# Usage: bash benchmarks/setup_trees_venv.sh   (PYTHON=... and VENV=... override the defaults)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.bench-venv-trees}"
PY="${PYTHON:-python3.11}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
"${PIP[@]}" "torch==2.13.0"  # bastion.data and bastion.attacks import torch
"${PIP[@]}" "adversarial-robustness-toolbox==1.20.1" "dtai-veritas==0.3.1" xgboost lightgbm \
    pandas pyarrow pyyaml packaging
"${PIP[@]}" --no-deps -e "$ROOT"

"$VENV/bin/python" -W ignore - <<'PY'
from importlib.metadata import version
import art.attacks.evasion, veritas, xgboost, lightgbm  # noqa: F401
for name in ("adversarial-robustness-toolbox", "dtai-veritas", "xgboost", "lightgbm",
             "scikit-learn", "numpy", "scipy"):
    print(f"{name}=={version(name)}")
PY
