"""``bastion evaluate membership|inversion`` in-process: exit codes, outputs, reports."""

from __future__ import annotations

import json
import warnings
import zlib
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


def test_membership_writes_reports(files: dict[str, Path], tmp_path: Path) -> None:
    args = ["evaluate", "membership", "-m", str(files["model"]), "--members", str(files["members"])]
    args += ["--non-members", str(files["non"]), "-a", "loss", "-a", "label-only"]
    args += ["-a", "lira-offline", "--population", str(files["pop"]), "--n-reference", "2"]
    args += ["--epochs", "3", "--out", str(tmp_path)]
    result = runner.invoke(_app(), args)
    assert result.exit_code == 0, result.output
    assert "TPR@1%FPR" in result.output
    doc = json.loads((tmp_path / "report.json").read_text())
    assert set(doc["attacks"]) == {"loss", "label-only", "lira-offline"}
    assert doc["attacks"]["loss"]["auc"] > 0.6  # an overfit MLP leaks
    assert doc["attacks"]["loss"]["queries"] == 200
    lira = doc["attacks"]["lira-offline"]
    assert 0 < lira["fit_seconds"] <= lira["seconds"]  # reference training is counted
    assert doc["findings"][0]["atlas"] == ["AML.T0024.000"]
    html = (tmp_path / "report.html").read_text()
    assert "ROC, log scale" in html and html.count("<svg") == 2
    assert "<script" not in html and 'src="http' not in html


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
    assert r.exit_code == 2 and "does not match" in r.output
    r = runner.invoke(_app(), [*base, "--bounds", "0"])
    assert r.exit_code == 2 and "--bounds" in r.output
    assert not (tmp_path / "report.json").exists()


def test_inversion_writes_png_grid(files: dict[str, Path], tmp_path: Path) -> None:
    args = ["evaluate", "inversion", "-m", str(files["model"]), "--classes", "0,1,7"]
    args += ["--reference", str(files["pop"]), "--steps", "50", "--out", str(tmp_path)]
    result = runner.invoke(_app(), args)
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["classes"] == [0, 1, 7] and doc["queries"] == 150
    assert len(doc["metrics"]["ssim"]) == 3 and doc["x_shape"] == [3, 1, 8, 8]
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3


def test_inversion_bad_input_exits_2(files: dict[str, Path], tmp_path: Path) -> None:
    base = ["evaluate", "inversion", "-m", str(files["model"]), "--out", str(tmp_path)]
    r = runner.invoke(_app(), [*base, "--classes", "a,b", "--input-shape", "1,8,8"])
    assert r.exit_code == 2 and "--classes" in r.output
    r = runner.invoke(_app(), [*base, "--classes", "12", "--input-shape", "1,8,8"])
    assert r.exit_code == 2 and "classes" in r.output
    r = runner.invoke(_app(), [*base, "--classes", "1"])
    assert r.exit_code == 2 and "input_shape" in r.output


def test_png_encoder_round_trip() -> None:
    img = (np.arange(12, dtype=np.uint8) * 20).reshape(3, 4)
    data = inference.png_bytes(img)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    start = data.index(b"IDAT") + 4
    length = int.from_bytes(data[start - 8 : start - 4], "big")
    raw = zlib.decompress(data[start : start + length])
    rows = [raw[i * 5 + 1 : i * 5 + 5] for i in range(3)]  # filter byte + 4 pixels per row
    assert b"".join(rows) == img.tobytes()
