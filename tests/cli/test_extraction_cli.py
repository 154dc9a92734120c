"""``bastion evaluate extraction``, invoked in-process on a Typer app built like the real one."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from bastion.cli import extraction

runner = CliRunner()
app = typer.Typer()
evaluate_app = typer.Typer()
app.add_typer(evaluate_app, name="evaluate")
extraction.register(evaluate_app)


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits_mlp) -> dict[str, Path]:
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    net, x, y = digits_mlp
    d = tmp_path_factory.mktemp("extraction-cli")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.trace(net, x[:2])
    scripted.save(str(d / "mlp.pt"))
    flat = x.reshape(len(x), -1).double().numpy()
    with threadpool_limits(limits=1):
        lr = LogisticRegression(max_iter=2000).fit(flat[:200], y[:200].numpy())
    sio.dump(lr, d / "lr.skops")
    np.savez(d / "data.npz", x=x.numpy(), y=y.numpy())
    np.savez(d / "flat.npz", x=flat.astype(np.float32), y=y.numpy())
    return {p.stem: p for p in d.iterdir()}


def _run(*args: object):
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return runner.invoke(app, [*map(str, args)])


def _entry(out: Path) -> dict:
    doc = json.loads((out / "report.json").read_text())
    assert doc["schema"] == "bastion.audit/1" and doc["command"] == "evaluate extraction"
    (entry,) = doc["checks"]
    return entry


def test_knockoff_report(files, tmp_path) -> None:
    out = tmp_path / "r"
    res = _run(
        "evaluate",
        "extraction",
        "--model",
        files["mlp"],
        "--data",
        files["data"],
        "--budget",
        "300",
        "--rounds",
        "3",
        "--epochs",
        "10",
        "--transfer-eps",
        "0.2",
        "--out",
        out,
    )
    assert res.exit_code == 0, res.output
    assert "fidelity" in res.output
    entry = _entry(out)
    assert entry["tables"][0]["rows"][0][:5] == ["model", "knockoff", "scores", 210, 300]
    fid = entry["metrics"]["fidelity"]
    assert fid["n"] == 90 and fid["value"] > 0.7 and fid["ci_method"] == "clopper-pearson"
    (curve,) = entry["plots"]
    # the pool holds 210 rows, fewer than the budget: 3 rounds of 70 queries
    assert curve["kind"] == "line" and curve["series"][0]["x"] == [70, 140, 210]
    transfer = entry["metrics"]["transfer_rate"]
    assert 0.0 <= transfer["value"] <= 1.0 and transfer["ci"] is not None
    html = (out / "report.html").read_text()
    assert "Fidelity of the copy against queries" in html and "<svg" in html
    assert 'src="http' not in html


def test_equation_with_hardening_and_fail_above(files, tmp_path) -> None:
    out = tmp_path / "r"
    res = _run(
        "evaluate",
        "extraction",
        "--model",
        files["lr"],
        "--data",
        files["flat"],
        "--strategy",
        "equation",
        "--budget",
        "650",
        "--transfer-eps",
        "0",
        "--harden",
        "rounding:2",
        "--harden",
        "label-only",
        "--out",
        out,
        "--fail-above",
        "0.9",
    )
    assert res.exit_code == 1, res.output
    assert "above --fail-above" in res.output
    entry = _entry(out)
    rows = {r[0]: r for r in entry["tables"][0]["rows"]}
    assert rows["model"][1:4] == ["equation", "scores", 65] and rows["model"][5] == 1.0
    assert entry["findings"][0]["severity"] == "high"
    assert entry["findings"][0]["id"] == "extraction.high-fidelity"
    # rounding breaks equation solving; label-only answers leave only a learning attack
    assert rows["through rounding(decimals=2)"][5] < 0.7
    assert rows["through label-only"][1:3] == ["copycat", "labels"]


def test_label_access_uses_hard_labels(files, tmp_path) -> None:
    out = tmp_path / "r"
    res = _run(
        "evaluate",
        "extraction",
        "--model",
        files["mlp"],
        "--data",
        files["data"],
        "--strategy",
        "copycat",
        "--access",
        "labels",
        "--budget",
        "100",
        "--rounds",
        "1",
        "--epochs",
        "2",
        "--transfer-eps",
        "0",
        "--out",
        out,
    )
    assert res.exit_code == 0, res.output
    entry = _entry(out)
    assert entry["tables"][0]["rows"][0][1:4] == ["copycat", "labels", 100]
    assert entry["settings"]["access"] == "labels"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--strategy", "bandit"], "--strategy"),
        (["--access", "gradients"], "--access"),
        (["--strategy", "equation", "--access", "labels"], "needs --access scores"),
        (["--pool-fraction", "1.5"], "--pool-fraction"),
        (["--budget", "0"], "--budget"),
        (["--harden", "median"], "unknown output policy"),
        (["--input-shape", "3,3"], "does not fit"),
    ],
)
def test_bad_options_exit_2(files, tmp_path, extra, message) -> None:
    res = _run(
        "evaluate",
        "extraction",
        "--model",
        files["mlp"],
        "--data",
        files["data"],
        "--out",
        tmp_path / "r",
        *extra,
    )
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert not (tmp_path / "r" / "report.json").exists()
