#!/usr/bin/env bash
# Create (or refresh) .bench-venv-drift for benchmarks/drift_bench.py, idempotently.
#
# alibi-detect needs numpy<2, while the project venv (.venv) runs numpy 2, so the peer lives in
# its own venv: python3.11, numpy<2, torch==2.13.0 (the one allowed local CPU wheel, for
# alibi-detect's PyTorch MMD backend) and alibi-detect from PyPI. drift_bench.py runs bastion in
# the project venv and alibi-detect here, as two subprocesses on the same saved data. bastion is
# installed here too (editable, --no-deps, plus httpx which bastion.monitor imports), so that
# `drift_bench.py --same-venv` can run both under numpy 1.26.
# Usage: bash benchmarks/setup_drift_venv.sh   (PYTHON=... and VENV=... override the defaults)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.bench-venv-drift}"
PY="${PYTHON:-python3.11}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)

# torch first, pinned, so nothing below can pull a different build; a constraints file keeps
# it (and numpy<2) in place while alibi-detect's dependencies resolve.
"${PIP[@]}" "torch==2.13.0" "numpy<2"
printf 'torch==2.13.0\nnumpy<2\n' > "$VENV/constraints-drift.txt"
"${PIP[@]}" -c "$VENV/constraints-drift.txt" alibi-detect
"${PIP[@]}" --no-deps -e "$ROOT"
"${PIP[@]}" -c "$VENV/constraints-drift.txt" httpx

"$VENV/bin/python" -W ignore - <<'PY'
from importlib.metadata import version
import numpy, torch
import alibi_detect.cd  # noqa: F401
import bastion.monitor  # noqa: F401
assert torch.__version__.startswith("2.13.0"), torch.__version__
assert int(numpy.__version__.split(".")[0]) < 2, numpy.__version__
for name in ("alibi-detect", "bastion-ml", "numpy", "scipy", "torch"):
    print(f"{name}=={version(name)}")
PY
