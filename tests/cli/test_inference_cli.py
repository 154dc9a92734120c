"""``bastion evaluate membership|inversion`` in-process: exit codes, outputs, reports."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from bastion.cli import inference
from bastion.data import load_digits
from bastion.models.zoo import small_mlp, train_classifier

runner = CliRunner()


def _app() -> typer.Typer:
    app = typer.Typer()
    ev = typer.Typer()
    app.add_typer(ev, name="evaluate")
    inference.register(ev)
    return app


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inference-cli")
    data = load_digits()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    x, y = data.x[perm], data.y[perm]
    torch.manual_seed(0)
    net = train_classifier(small_mlp(64, 10, hidden=256), x[:100], y[:100], epochs=100, lr=3e-3)
    with warnings.catch_warnings():  # TorchScript is deprecated upstream, still shipped
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(net.eval(), torch.zeros(2, 1, 8, 8))
    model = d / "model.pt"
    traced.save(str(model))
    out = {"model": model}
    for name, sl in (
        ("members", slice(0, 100)),
        ("non", slice(100, 200)),
        ("pop", slice(200, 600)),
    ):
        p = d / f"{name}.npz"
        np.savez(p, x=x[sl].numpy(), y=y[sl].numpy())
        out[name] = p
    return out


def _entry(out: Path, name: str) -> dict:
    doc = json.loads((out / "report.json").read_text())
    assert doc["schema"] == "bastion.audit/1"
    (entry,) = [c for c in doc["checks"] if c["name"] == name]
    return entry


def test_membership_writes_the_audit_document(files: dict[str, Path], tmp_path: Path) -> None:
    args = ["evaluate", "membership", "-m", str(files["model"]), "--members", str(files["members"])]
    args += ["--non-members", str(files["non"]), "-a", "loss", "-a", "label-only"]
    args += ["-a", "lira-offline", "--population", str(files["pop"]), "--n-reference", "2"]
    args += ["--epochs", "3", "--out", str(tmp_path)]
    result = runner.invoke(_app(), args)
    assert result.exit_code == 0, result.output
    assert "TPR@1%FPR" in result.output
    entry = _entry(tmp_path, "membership")
    assert entry["settings"]["attacks"] == ["loss", "label-only", "lira"]
    assert entry["settings"]["members"] == 100 and entry["settings"]["non_members"] == 100
    assert entry["metrics"]["loss-threshold.auc"]["value"] > 0.6  # an overfit MLP leaks
    assert entry["metrics"]["loss-threshold.auc"]["ci_method"].startswith("bootstrap")
    ids = {f["id"] for f in entry["findings"]}
    assert "membership.loss-threshold" in ids
    assert entry["findings"][0]["atlas"] == ["AML.T0024.000"]
    (roc,) = entry["plots"]
    assert roc["kind"] == "roc" and roc["log_x"] and len(roc["series"]) == 3
    html = (tmp_path / "report.html").read_text()
    assert "<svg" in html and 'src="http' not in html
    assert (tmp_path / "report.md").exists()
    again = runner.invoke(_app(), args)  # never overwrites a report silently
    assert again.exit_code == 2 and "--force" in again.output


def test_membership_bad_input_exits_2(files: dict[str, Path], tmp_path: Path) -> None:
    base = ["evaluate", "membership", "-m", str(files["model"]), "--members", str(files["members"])]
    base += ["--non-members", str(files["non"]), "--out", str(tmp_path)]
    r = runner.invoke(_app(), [*base, "-a", "lira"])
    assert r.exit_code == 2 and "--population" in r.output
    r = runner.invoke(_app(), [*base, "-a", "telepathy"])
    assert r.exit_code == 2 and "unknown membership attack" in r.output
    r = runner.invoke(_app(), [*base, "--max-queries", "10"])
    assert r.exit_code == 2 and "budget" in r.output
    r = runner.invoke(_app(), [*base, "--input-shape", "1,9,9"])
    assert r.exit_code == 2 and "1, 9, 9" in r.output
    r = runner.invoke(_app(), [*base, "--bounds", "0"])
    assert r.exit_code == 2 and "--bounds" in r.output
    assert not (tmp_path / "report.json").exists()


def test_inversion_shows_reconstructions_beside_class_means(
    files: dict[str, Path], tmp_path: Path
) -> None:
    args = ["evaluate", "inversion", "-m", str(files["model"]), "--classes", "0,1,7"]
    args += ["--reference", str(files["pop"]), "--steps", "50", "--out", str(tmp_path)]
    result = runner.invoke(_app(), args)
    assert result.exit_code == 0, result.output
    entry = _entry(tmp_path, "inversion")
    assert entry["settings"]["classes"] == [0, 1, 7]
    (plot,) = entry["plots"]
    assert plot["kind"] == "images" and [r["caption"] for r in plot["images"]] == [
        "class 0",
        "class 1",
        "class 7",
    ]
    assert entry["metrics"]["closer_to_own_mean"]["n"] == 3
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 6  # each reconstruction and its class mean


def test_inversion_bad_input_exits_2(files: dict[str, Path], tmp_path: Path) -> None:
    base = ["evaluate", "inversion", "-m", str(files["model"]), "--out", str(tmp_path)]
    r = runner.invoke(_app(), [*base, "--classes", "a,b", "--input-shape", "1,8,8"])
    assert r.exit_code == 2 and "--classes" in r.output
    ref = ["--reference", str(files["pop"])]
    r = runner.invoke(_app(), [*base, *ref, "--classes", "12", "--steps", "2"])
    assert r.exit_code == 2 and "classes [12]" in r.output
    r = runner.invoke(_app(), [*base, "--classes", "1"])
    assert r.exit_code == 2 and "--reference" in r.output
