"""``bastion --version`` and every ``--help`` answer without importing torch (a 3 s import)."""

from __future__ import annotations

import subprocess
import sys

import pytest

_PROBE = """
import sys
from bastion.cli.main import app
try:
    app(sys.argv[1:], prog_name="bastion")
except SystemExit as exc:
    code = exc.code or 0
heavy = sorted(m for m in ("torch", "sklearn", "scipy", "onnxruntime") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
sys.exit(code)
"""


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "args",
    [
        ("--version",),
        ("--help",),
        ("evaluate", "evasion", "--help"),
        ("evaluate", "membership", "--help"),
        ("harden", "adversarial", "--help"),
        ("harden", "fix", "--help"),
        ("data", "scan-poison", "--help"),
        ("scan", "--help"),
    ],
)
def test_version_and_help_do_not_import_torch(args: tuple[str, ...]) -> None:
    res = _run(*args)
    assert res.returncode == 0, res.stderr
    assert "HEAVY=\n" in res.stdout, res.stdout.splitlines()[-1]
    if args == ("--version",):
        assert res.stdout.startswith("bastion ")
