"""What a user reads: messages that say what was written, key columns that survive 80-column
terminals, numbers printed the way people write them, contracts that do what their help says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from bastion.cli import data as data_cli
from bastion.cli import registry as registry_cli
from bastion.cli import scan as scan_cli
from bastion.cli._common import fmt_value

PAYLOAD = b"\x80\x02cos\ngetcwd\n)R."


def _app(*modules: object) -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Test root (keeps sub-commands as sub-commands)."""

    for module in modules:
        module.register(app)  # type: ignore[attr-defined]
    return app


def _bastion_80(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run the real command in an 80-column terminal (COLUMNS=80) and return its stdout."""
    import os

    full_env = {**os.environ, "COLUMNS": "80", **(env or {})}
    res = subprocess.run(
        [sys.executable, "-c", "from bastion.cli.main import main; main()", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120,
    )
    return res.stdout + res.stderr


def _first_column(table: str) -> str:
    """The text of a rich table's first column, its folded lines joined back together."""
    cells = [line.split("│")[1].strip() for line in table.splitlines() if line.startswith("│")]
    return "".join(cells)


def test_decrypt_says_what_it_wrote(tmp_path: Path) -> None:
    app = _app(registry_cli)
    runner = CliRunner()
    (tmp_path / "model.pt").write_bytes(b"w" * 1000)
    assert runner.invoke(app, ["keygen", str(tmp_path / "kek"), "--kind", "aes-256"]).exit_code == 0
    res = runner.invoke(app, ["encrypt", str(tmp_path / "model.pt"), str(tmp_path / "m.enc"),
                              "--key-file", str(tmp_path / "kek")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["decrypt", str(tmp_path / "m.enc"), str(tmp_path / "back.pt"),
                              "--key-file", str(tmp_path / "kek")])
    assert res.exit_code == 0, res.output
    assert res.output.strip() != "{}"
    assert f"-> {tmp_path / 'back.pt'} (1000 bytes" in res.output.replace("\n", "")
    assert (tmp_path / "back.pt").read_bytes() == b"w" * 1000


def test_scan_to_a_file_says_what_was_written_and_the_counts(tmp_path: Path) -> None:
    (tmp_path / "bad.bin").write_bytes(PAYLOAD)
    (tmp_path / "good.npy").write_bytes(b"")
    out = tmp_path / "scan.sarif"
    res = CliRunner().invoke(_app(scan_cli), ["scan", str(tmp_path / "bad.bin"), "--format",
                                              "sarif", "--out", str(out)])
    assert res.exit_code == 1
    text = " ".join(res.output.split())
    assert f"wrote sarif report {out}" in text
    assert "1 file(s), 0 clean, 1 unsafe, 0 error" in text
    assert json.loads(out.read_text())["runs"][0]["results"]


def test_scan_table_keeps_the_file_column_at_80_columns(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "evil_model_epoch_0042.pkl").write_bytes(PAYLOAD)
    text = _bastion_80("scan", "checkpoints/evil_model_epoch_0042.pkl", cwd=tmp_path)
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert _first_column(text) == "checkpoints/evil_model_epoch_0042.pkl", text
    assert "…" not in text


def test_registry_list_keeps_the_name_at_80_columns(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"weights")
    env = {
        "BASTION_REGISTRY_METADATA_URL": f"sqlite:///{tmp_path / 'reg.db'}",
        "BASTION_REGISTRY_STORAGE_URL": (tmp_path / "blobs").as_uri(),
        "BASTION_ACTOR": "alice",
    }
    pushed = _bastion_80("registry", "push", "digits-cnn-small-v2-candidate", "model.bin",
                         cwd=tmp_path, env=env)
    assert "digits-cnn-small-v2-candidate" in pushed, pushed
    text = _bastion_80("registry", "list", cwd=tmp_path, env=env)
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert _first_column(text) == "digits-cnn-small-v2-candidate", text
    assert "…" not in text


@pytest.mark.parametrize(
    ("value", "shown"),
    [(934.9499999999999, "934.95"), (0.1 + 0.2, "0.3"), ([10.9, 96.10000000000001], "[10.9, 96.1]"),
     (None, "—"), (3, "3")],
)
def test_floats_print_as_people_write_them(value: object, shown: str) -> None:
    assert fmt_value(value) == shown


def test_inferred_contract_widens_by_the_documented_tolerance(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 400
    ages = rng.integers(18, 90, n)
    ages[:2] = [18, 89]
    amount = np.round(rng.lognormal(3.0, 1.0, n), 2)
    pd.DataFrame({"age": ages, "amount": amount}).to_csv(tmp_path / "train.csv", index=False)
    app = _app(data_cli)
    res = CliRunner().invoke(app, ["data", "infer-contract", str(tmp_path / "train.csv"),
                                   "--out", str(tmp_path / "c.yaml"),
                                   "--report-dir", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    cols = {c["name"]: c for c in json.loads((tmp_path / "rep" / "report.json").read_text())
            ["columns"]}
    # 18..89 widened by 10% of 71 on each side: 10.9..96.1, never a negative age
    assert cols["age"]["accepted"] == pytest.approx([10.9, 96.1])
    lo, hi = float(amount.min()), float(amount.max())
    assert cols["amount"]["accepted"][0] == 0.0  # never seen negative: stays >= 0
    assert cols["amount"]["accepted"][1] == pytest.approx(hi + 0.1 * (hi - lo), rel=1e-3)
    assert "age: seen 18 to 89, accepts 10.9 to 96.1" in res.output
    assert "accepted range" in (tmp_path / "rep" / "report.html").read_text()
    batch = pd.DataFrame({"age": [-4, 30, 97], "amount": [-76.69, 10.0, 5.0]})
    batch.to_csv(tmp_path / "batch.csv", index=False)
    res = CliRunner().invoke(app, ["data", "validate", str(tmp_path / "batch.csv"),
                                   "--contract", str(tmp_path / "c.yaml"), "--no-distribution",
                                   "--out", str(tmp_path / "dq")])
    assert res.exit_code == data_cli.EXIT_FAILED
    doc = json.loads((tmp_path / "dq" / "report.json").read_text())
    bad = {(v["column"], v["row"]) for v in doc["violations"] if v["rule"] == "range"}
    assert bad == {("age", 0), ("age", 2), ("amount", 0)}
