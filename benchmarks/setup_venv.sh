#!/usr/bin/env bash
# Create (or refresh) the evasion-benchmark venv at .bench-venv, idempotently.
#
# The venv holds torch 2.13.0 (the local CPU wheel, never another torch), bastion installed
# editable, and the peer libraries pinned in benchmarks/requirements-evasion.txt.
# Usage: bash benchmarks/setup_venv.sh   (from anywhere; VENV=... overrides the location)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.bench-venv}"
PY="${PYTHON:-python3.11}"
REQ="$ROOT/benchmarks/requirements-evasion.txt"

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)

# torch first, pinned, so nothing below can pull a different build.
"${PIP[@]}" "torch==2.13.0"
# bastion itself, without resolving its deps (they are pinned in the requirements file).
"${PIP[@]}" --no-deps -e "$ROOT"
# everything else at exact versions; the list is the full closure, so no resolution happens
# and no other torch (or torchvision, see the requirements file) can be pulled in.
"${PIP[@]}" --no-deps -r "$REQ"
# a torchvision left by an earlier, resolving install would break `import art`
"$VENV/bin/python" -m pip uninstall -y -q torchvision 2>/dev/null || true

"$VENV/bin/python" -W ignore - <<'PY'
import torch, art, torchattacks, foolbox, bastion  # noqa: F401
assert torch.__version__.startswith("2.13.0"), torch.__version__
print("bench venv ok: torch", torch.__version__, "| art", art.__version__,
      "| torchattacks", torchattacks.__version__, "| foolbox", foolbox.__version__)
PY
