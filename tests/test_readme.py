"""Every Python example in the README runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no Python example"
    for block in blocks:
        namespace: dict[str, object] = {"__name__": "readme"}
        exec(compile(block, str(README), "exec"), namespace)
        res = namespace.get("res")
        if res is not None:
            assert res.robust_accuracy < res.clean_accuracy


# -- the CLI tour: every command, in order, in an empty folder ------------------------------
_TOUR_SKIP_MARK = "(not run by the test)"


def _tour_commands() -> list[tuple[str, str]]:
    """``(command, comment)`` for each line of the README's bash tour (continuations joined)."""
    block = re.search(r"## A tour of the CLI.*?```bash\n(.*?)```", README.read_text(), re.S)
    assert block, "the README has no CLI tour"
    lines: list[str] = []
    for raw in block.group(1).splitlines():
        if lines and lines[-1].endswith("\\"):
            lines[-1] = lines[-1][:-1].rstrip() + " " + raw.strip()
        else:
            lines.append(raw.strip())
    out = []
    for line in lines:
        if not line:
            continue
        command, _, comment = line.partition("   #") if "   #" in line else line.partition(" # ")
        out.append((command.strip(), comment.strip()))
    return out


def _expected_codes(comment: str) -> set[int]:
    """0, and the code a line's comment documents (``exit 1 ...``)."""
    found = re.findall(r"exit (\d)", comment)
    return {0, *map(int, found)}


# In the default suite so that the tour cannot rot: about 1.5 minutes on 2 cores (two full
# audits, three hardening runs), longer when the machine is shared.
def test_the_cli_tour_runs_in_order_in_an_empty_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import shlex
    import shutil
    import subprocess

    from typer.testing import CliRunner

    from bastion.cli.main import app

    root = README.parent
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the registry's default folder
    for var in ("BASTION_REGISTRY_METADATA_URL", "BASTION_REGISTRY_STORAGE_URL",
                "BASTION_ACCESS_DB", "BASTION_TRUSTED_KEYS", "BASTION_KEK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("BASTION_ACTOR", "tour")
    shutil.copytree(root / "examples", tmp_path / "examples")
    runner = CliRunner()
    skipped = []
    for command, comment in _tour_commands():
        if _TOUR_SKIP_MARK in comment:
            skipped.append(command)
            continue
        for part in command.split(" && "):
            words = shlex.split(part)
            if words[0] != "bastion":  # the shell steps of the tour (mkdir, printf)
                res = subprocess.run(["bash", "-c", part], cwd=tmp_path, capture_output=True,
                                     text=True, env=os.environ.copy(), timeout=60)
                assert res.returncode == 0, f"{part}\n{res.stderr}"
                continue
            result = runner.invoke(app, words[1:], catch_exceptions=True)
            assert result.exit_code in _expected_codes(comment), (
                f"{part}\nexit {result.exit_code}\n{result.output}\n{result.exception!r}"
            )
            assert "Traceback" not in result.output, part
    # only the lines that need a server or a file of your own are skipped, and they say so
    assert [c.split()[1] for c in skipped] == ["audit", "audit", "serve", "<command>"]
    assert (tmp_path / "audit-champion" / "report.json").is_file()
    assert (tmp_path / "dq" / "report.json").is_file()
