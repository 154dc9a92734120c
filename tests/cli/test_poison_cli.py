"""``bastion data scan-poison`` invoked in-process: exit codes, report.json, report.html."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner, Result

from bastion.attacks.poisoning import BadNets
from bastion.cli import poison
from bastion.data import load_digits
from bastion.models.zoo import small_cnn, train_classifier

runner = CliRunner()


def _app() -> typer.Typer:
    app = typer.Typer()
    data = typer.Typer()
    app.add_typer(data, name="data")
    poison.register(data)
    return app


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("poison_cli")
    data = load_digits()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    x, y = data.x[perm][:1400], data.y[perm][:1400]
    res = BadNets(target_class=0, rate=0.05, seed=0).poison(x, y)
    torch.manual_seed(0)
    net = train_classifier(small_cnn((1, 8, 8), 10), res.x, res.y, epochs=10, lr=3e-3, seed=0)
    torch.save(net.state_dict(), d / "model.pt")
    np.savez(d / "poisoned.npz", x=res.x.numpy(), y=res.y.numpy())
    np.savez(d / "clean.npz", x=x[~res.mask][:300].numpy(), y=y[~res.mask][:300].numpy())
    np.save(d / "mask.npy", res.mask.numpy())
    (d / "poison_factory_mod.py").write_text(
        textwrap.dedent(
            """
            from bastion.models.zoo import small_cnn

            def build():
                return small_cnn((1, 8, 8), 10)
            """
        )
    )
    return {p.stem: p for p in d.iterdir()}


@pytest.fixture
def on_path(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(files["poisoned"].parent))


def _entry(out: Path) -> dict:
    doc = json.loads((out / "report.json").read_text())
    assert doc["schema"] == "bastion.audit/1" and doc["command"] == "data scan-poison"
    (entry,) = doc["checks"]
    return entry


def _scan(files: dict[str, Path], data: str, out: Path, *extra: str) -> Result:
    args = ["data", "scan-poison", "--model", str(files["model"]), "--data", str(files[data])]
    args += ["--factory", "poison_factory_mod:build", "--out", str(out), *extra]
    return runner.invoke(_app(), args)


def test_poisoned_data_exit_1_with_reports(
    files: dict[str, Path], on_path: None, tmp_path: Path
) -> None:
    result = _scan(files, "poisoned", tmp_path, "--layer", "5", "--methods", "ac,spectral")
    assert result.exit_code == 1, result.output
    entry = _entry(tmp_path)
    mask = np.load(files["mask"])
    flagged = np.zeros(len(mask), dtype=bool)
    flagged[entry["settings"]["flagged_indices"]] = True
    assert (flagged & mask).sum() >= 0.9 * mask.sum()
    assert (flagged & mask).sum() >= 0.8 * flagged.sum()
    (finding,) = entry["findings"]
    assert finding["id"] == "poisoning.suspected-backdoor" and finding["location"] == "class:0"
    assert finding["evidence"]["methods"] == ["activation_clustering", "spectral_signatures"]
    assert "AML.T0020" in finding["atlas"] and "ML02" in finding["owasp"]
    kinds = [p["kind"] for p in entry["plots"]]
    assert kinds == ["histogram", "histogram", "images"]
    html = (tmp_path / "report.html").read_text()
    assert "Flagged training samples" in html and "data:image/png;base64," in html


def test_clean_data_exit_0(files: dict[str, Path], on_path: None, tmp_path: Path) -> None:
    result = _scan(files, "clean", tmp_path, "--layer", "5", "--methods", "spectral")
    assert result.exit_code == 0, result.output
    entry = _entry(tmp_path)
    assert entry["status"] == "passed" and entry["findings"] == []
    assert entry["metrics"]["flagged_fraction"]["value"] == 0.0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--methods", "nope"), "unknown poison-detection method"),
        (("--layer", "missing"), "no layer named"),
    ],
)
def test_bad_options_exit_2(
    files: dict[str, Path], on_path: None, tmp_path: Path, extra: tuple[str, ...], message: str
) -> None:
    result = _scan(files, "poisoned", tmp_path, *extra)
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "report.json").exists()


def test_missing_data_file_exit_2(files: dict[str, Path], tmp_path: Path) -> None:
    args = ["data", "scan-poison", "--model", str(files["model"])]
    args += ["--data", str(tmp_path / "none.npz"), "--out", str(tmp_path)]
    result = runner.invoke(_app(), args)
    assert result.exit_code == 2
    assert "not found" in result.output
