"""``bastion evaluate evasion`` on models without gradients and on tables: the default attack
follows what the model offers, errors recommend only attacks that will run, and a CSV loads."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import typer
from torch import nn
from typer.testing import CliRunner

from bastion.cli import evaluate
from bastion.data import load_digits
from bastion.models.zoo import train_classifier

runner = CliRunner()
FAST = ["--max-samples", "8", "--max-queries", "20", "--curve-points", "0", "--quiet"]


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Test root."""

    evaluate.register(app)
    return app


def _onnx(net: nn.Module, shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (torch.zeros(1, *shape),), buf, dynamo=False,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})
    return buf.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("evasion_defaults")
    data = load_digits()
    torch.manual_seed(0)
    image_net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    train_classifier(image_net, data.x[:500], data.y[:500], epochs=3, seed=0)
    (d / "images.onnx").write_bytes(_onnx(image_net.eval(), (1, 8, 8)))
    flat_net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    train_classifier(flat_net, data.x[:500].reshape(500, 64), data.y[:500], epochs=3, seed=0)
    (d / "table.onnx").write_bytes(_onnx(flat_net.eval(), (64,)))
    np.savez(d / "images.npz", x=data.x[1500:1520].numpy(), y=data.y[1500:1520].numpy())
    table = pd.DataFrame(data.x[1500:1520].reshape(20, 64).numpy(),
                         columns=[f"p{i}" for i in range(64)])
    table["label"] = data.y[1500:1520].numpy()
    table.to_csv(d / "table.csv", index=False)
    table.assign(p3="dark").to_csv(d / "text.csv", index=False)
    (d / "notes.txt").write_text("not data\n")
    return {p.name: p for p in d.iterdir()}


def _check(out: Path) -> dict[str, Any]:
    """The evasion check of the audit document the command wrote."""
    doc = json.loads((out / "report.json").read_text())
    check: dict[str, Any] = next(c for c in doc["checks"] if c["name"] == "evasion")
    return check


def _run(files: dict[str, Path], out: Path, model: str, data: str, *extra: str) -> Any:
    return runner.invoke(_app(), ["evaluate", "evasion", "--model", str(files[model]),
                                  "--data", str(files[data]), "--out", str(out), *FAST,
                                  *extra])


def test_onnx_image_model_defaults_to_a_score_based_attack(
    files: dict[str, Path], tmp_path: Path
) -> None:
    res = _run(files, tmp_path / "r", "images.onnx", "images.npz")
    assert res.exit_code == 0, res.output
    assert _check(tmp_path / "r")["settings"]["attacks"] == ["square"]


def test_a_csv_table_loads_and_a_feature_model_defaults_to_hopskipjump(
    files: dict[str, Path], tmp_path: Path
) -> None:
    res = _run(files, tmp_path / "r", "table.onnx", "table.csv")
    assert res.exit_code == 0, res.output
    check = _check(tmp_path / "r")
    assert check["settings"]["attacks"] == ["hopskipjump"]
    assert check["metrics"]["clean_accuracy"]["n"] == 8


def test_errors_recommend_only_attacks_that_run(files: dict[str, Path], tmp_path: Path) -> None:
    res = _run(files, tmp_path / "r", "table.onnx", "table.csv", "--attack", "pgd")
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "attacks that run on this model: hopskipjump" in text
    assert "square" not in text  # it would refuse feature vectors
    res = _run(files, tmp_path / "r", "table.onnx", "table.csv", "--attack", "square")
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "hopskipjump" in text and "gradient" not in text


@pytest.mark.parametrize(
    ("data", "message"),
    [("text.csv", "feature columns must be numeric; p3 is not"),
     ("notes.txt", "the data must be an .npz with arrays x and y, or a table (.csv, .parquet)")],
)
def test_unreadable_data_names_what_is_supported(
    files: dict[str, Path], tmp_path: Path, data: str, message: str
) -> None:
    res = _run(files, tmp_path / "r", "table.onnx", data)
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert message in text and "allow_pickle" not in text and "Traceback" not in text
