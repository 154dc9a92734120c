"""``bastion data infer-contract`` and ``bastion data validate``, invoked in-process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from bastion.cli import data as data_cli
from bastion.data import load_digits

runner = CliRunner()


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    root = typer.Typer()
    data_cli.register(root)

    @root.callback()
    def _root() -> None:  # keep `data` a sub-command group
        """Test root."""

    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("data-cli")
    x = load_digits().x.numpy()
    perm = np.random.default_rng(0).permutation(len(x))
    np.save(d / "ref.npy", x[perm[:1200]])
    np.save(d / "clean.npy", x[perm[1200:1400]])
    bad = x[perm[1200:1230]].copy()
    bad[2, 0, 3, 3] = 5.0
    np.save(d / "bad.npy", bad)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"size": rng.normal(10, 2, 400), "kind": rng.choice(["a", "b"], 400)})
    frame.to_csv(d / "ref.csv", index=False)
    frame.iloc[:100].to_parquet(d / "clean.parquet")
    broken = frame.iloc[:50].copy()
    broken.loc[7, "kind"] = "zzz"
    broken.to_csv(d / "broken.csv", index=False)
    (d / "bad.yaml").write_text("version: [1\n")
    return {p.name: p for p in d.iterdir()}


def _run(app: typer.Typer, *args: object):
    return runner.invoke(app, [str(a) for a in args])


def test_tensor_infer_then_validate(app, files, tmp_path):
    contract = tmp_path / "c.yaml"
    res = _run(
        app, "data", "infer-contract", files["ref.npy"], "--out", contract, "--name", "digits"
    )
    assert res.exit_code == 0, res.output
    assert "name: digits" in contract.read_text()
    summary = json.loads((tmp_path / "report.json").read_text())
    assert summary["shape"] == [None, 1, 8, 8] and summary["n_reference"] == 1200
    assert summary["channels"][0]["max"] == 1.0
    assert "Data contract: digits" in (tmp_path / "report.html").read_text()
    ok = _run(
        app,
        "data",
        "validate",
        files["clean.npy"],
        "--contract",
        contract,
        "--out",
        tmp_path / "ok",
    )
    assert ok.exit_code == 0, ok.output
    assert "PASS" in ok.output
    doc = json.loads((tmp_path / "ok" / "report.json").read_text())
    assert doc["ok"] is True and doc["n_rows"] == 200 and doc["drift"]
    failed = _run(
        app, "data", "validate", files["bad.npy"], "--contract", contract, "--out", tmp_path / "bad"
    )
    assert failed.exit_code == 1, failed.output
    assert "FAIL" in failed.output and "range" in failed.output
    doc = json.loads((tmp_path / "bad" / "report.json").read_text())
    errors = [v for v in doc["violations"] if v["severity"] == "error"]
    assert [(v["rule"], v["row"], v["index"]) for v in errors] == [("range", 2, [0, 3, 3])]
    page = (tmp_path / "bad" / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert "sample 2 has 5 at (0, 3, 3)" in page and "FAIL" in page


def test_table_csv_and_parquet(app, files, tmp_path):
    contract = tmp_path / "t.yaml"
    res = _run(
        app,
        "data",
        "infer-contract",
        files["ref.csv"],
        "-o",
        contract,
        "--report-dir",
        tmp_path / "inferred",
    )
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "inferred" / "report.json").read_text())
    assert [(c["name"], c["kind"], c["categories"]) for c in summary["columns"]] == [
        ("size", "float", None),
        ("kind", "categorical", 2),
    ]
    page = (tmp_path / "inferred" / "report.html").read_text()
    assert "<td>categorical</td>" in page and "<script" not in page
    ok = _run(
        app,
        "data",
        "validate",
        files["clean.parquet"],
        "--contract",
        contract,
        "--out",
        tmp_path / "p",
    )
    assert ok.exit_code == 0, ok.output
    res = _run(
        app,
        "data",
        "validate",
        files["broken.csv"],
        "--contract",
        contract,
        "--out",
        tmp_path / "b",
        "--no-distribution",
    )
    assert res.exit_code == 1
    doc = json.loads((tmp_path / "b" / "report.json").read_text())
    assert [
        (v["rule"], v["row"], v["column"], v["value"])
        for v in doc["violations"]
        if v["severity"] == "error"
    ] == [("category", 7, "kind", "zzz")]
    assert doc["drift"] == []


def test_errors_exit_2(app, files, tmp_path):
    contract = tmp_path / "c.yaml"
    _run(app, "data", "infer-contract", files["ref.npy"], "--out", contract)
    cases = [
        ("validate", files["clean.npy"], "--contract", files["bad.yaml"], "--out", tmp_path),
        ("validate", files["clean.npy"], "--contract", tmp_path / "none.yaml", "--out", tmp_path),
        ("validate", tmp_path / "missing.npy", "--contract", contract, "--out", tmp_path),
        ("infer-contract", files["bad.yaml"], "--out", tmp_path / "x.yaml"),
        ("validate", files["clean.npy"], "--contract", contract, "--fdr", "2"),
    ]
    for args in cases:
        res = _run(app, "data", *args)
        assert res.exit_code == 2, (args, res.output)
        assert "error" in res.output
    assert not (tmp_path / "x.yaml").exists()


def test_data_app_is_shared():
    assert isinstance(data_cli.data_app, typer.Typer)
    names = {c.name for c in data_cli.data_app.registered_commands}
    assert {"infer-contract", "validate"} <= names
