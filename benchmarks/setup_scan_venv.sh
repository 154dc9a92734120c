#!/usr/bin/env bash
# Create .bench-venv-scan with bastion (editable) and the peer scanners modelscan, picklescan and
# fickling from PyPI, for benchmarks/scan.py. torch is pinned to the one allowed wheel.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.bench-venv-scan"
PY="${PYTHON:-python3.11}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/pip"
"$PIP" install --quiet --upgrade pip
# torch first, pinned, so that no other package pulls a different build
"$PIP" install --quiet "torch==2.13.0"
"$PIP" install --quiet -e "$ROOT"
"$PIP" install --quiet safetensors h5py py7zr
# the peers; a constraint keeps torch where it is
echo "torch==2.13.0" > "$VENV/constraints.txt"
"$PIP" install --quiet -c "$VENV/constraints.txt" modelscan picklescan fickling
"$VENV/bin/python" - <<'PY'
from importlib.metadata import version
for name in ("torch", "modelscan", "picklescan", "fickling", "bastion-ml"):
    print(f"{name}=={version(name)}")
PY
