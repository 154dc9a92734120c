"""Commands a new user runs on their own TorchScript model and on budgets that cannot work:
clean answers (never a traceback, never the 'suspicious' exit code for an error), flag
spellings in messages, warnings that say why, and the privacy effect of DP-SGD."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from bastion.cli import harden, poison
from bastion.data import load_digits
from bastion.models.zoo import small_cnn, train_classifier

runner = CliRunner()
TINY = ["--max-samples", "20", "--steps", "2", "--attack", "pgd", "--curve-points", "0",
        "--quiet"]  # fmt: skip


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Test root."""

    data = typer.Typer()
    app.add_typer(data, name="data")
    poison.register(data)
    harden.register(app)
    return app


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("new_user")
    data = load_digits()
    torch.manual_seed(0)
    net = train_classifier(small_cnn((1, 8, 8), 10, width=8), data.x[:600], data.y[:600],
                           epochs=2, seed=0).eval()
    with warnings.catch_warnings():  # TorchScript is deprecated, and still what users have
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.trace(net, data.x[:2]).save(str(d / "scripted.pt"))
    torch.save(net.state_dict(), d / "weights.pt")
    np.savez(d / "pool.npz", x=data.x[:400].numpy(), y=data.y[:400].numpy())
    return {p.stem: p for p in d.iterdir()}


def _invoke(*args: Any) -> Any:
    return runner.invoke(_app(), [str(a) for a in args])


def test_scan_poison_reads_any_layer_of_a_torchscript_model(
    files: dict[str, Path], tmp_path: Path
) -> None:
    res = _invoke("data", "scan-poison", "--model", files["scripted"], "--data", files["pool"],
                  "--layer", "4", "--out", tmp_path / "p")
    assert res.exit_code in (0, poison.EXIT_SUSPICIOUS), res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    doc = json.loads((tmp_path / "p" / "report.json").read_text())
    (entry,) = doc["checks"]
    assert entry["metrics"]["flagged_fraction"]["n"] == 400
    assert entry["settings"]["methods"] == ["activation_clustering", "spectral_signatures"]


def test_a_layer_that_does_not_exist_is_an_error_not_suspicious(
    files: dict[str, Path], tmp_path: Path
) -> None:
    res = _invoke("data", "scan-poison", "--model", files["scripted"], "--data", files["pool"],
                  "--layer", "0.weight", "--out", tmp_path / "p")
    assert res.exit_code == 2, res.output  # an error, not 1 ("suspicious")
    text = " ".join(res.output.split())
    assert "Traceback" not in text and "no layer named '0.weight'" in text
    assert "layer=" not in text


def test_layer_message_uses_the_flag_spelling() -> None:
    from bastion.cli._common import cli_spelling

    assert cli_spelling("name a layer with layer= (one of: 0, 1)") == (
        "name a layer with --layer (one of: 0, 1)"
    )
    assert cli_spelling("pass trust_pickle=True (--trust-pickle) only if") == (
        "pass --trust-pickle only if"
    )
    assert cli_spelling("numpy refused it with allow_pickle=False") == (
        "numpy refused it with allow_pickle=False"  # not an option of ours: left alone
    )


def test_harden_adversarial_trains_a_users_torchscript_model(
    files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "h"
    res = _invoke("harden", "adversarial", "--model", files["scripted"], "--data",
                  files["pool"], "--eps", "0.1", "--epochs", "1", "--train-steps", "2",
                  *TINY, "--out", out)
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "report.json").read_text())
    assert doc["files"]["model_format"] == "torchscript"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        hardened = torch.jit.load(str(out / "model.pt"))
        original = torch.jit.load(str(files["scripted"]))
    changed = any(not torch.equal(a, b) for a, b in zip(hardened.parameters(),
                                                         original.parameters(), strict=True))
    assert changed  # it was trained, and the user's file was not touched


def test_a_hardening_run_that_achieves_nothing_says_why_and_fails_under(
    tmp_path: Path,
) -> None:
    out = tmp_path / "h"
    res = _invoke("harden", "adversarial", "--data", "digits", "--baseline-epochs", "2",
                  "--eps", "0.3", "--epochs", "1", "--train-steps", "3", "--max-samples", "40",
                  "--steps", "10", "--attack", "pgd", "--curve-points", "0", "--quiet",
                  "--out", out, "--fail-under", "0.2")
    assert res.exit_code == 1, res.output
    text = " ".join(res.output.split())
    assert "hardening achieved nothing" in text
    assert "--eps 0.3 is too large for this data's scale" in text
    assert "below --fail-under 0.2" in text
    doc = json.loads((out / "report.json").read_text())
    assert doc["after"]["robust_accuracy"] <= doc["before"]["robust_accuracy"]
    assert any("too large" in w for w in doc["warnings"])


def test_dp_report_shows_the_privacy_effect(tmp_path: Path) -> None:
    out = tmp_path / "dp"
    res = _invoke("harden", "dp", "--data", "digits", "--arch", "small_mlp",
                  "--baseline-epochs", "2", "--epochs", "1", *TINY, "--out", out)
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "report.json").read_text())
    for side in ("before", "after"):
        p = doc["privacy"][side]
        assert p["attack"] == "loss" and p["n_members"] == p["n_non_members"] > 100
        assert 0.0 <= p["tpr_at_1pct_fpr"] <= 1.0 and 0.0 <= p["auc"] <= 1.0
    assert doc["summary"]["membership_tpr_at_1pct_fpr"]["before"] == (
        doc["privacy"]["before"]["tpr_at_1pct_fpr"]
    )
    html = (out / "report.html").read_text()
    assert "TPR at 1% FPR" in html and "membership" in html.lower()  # the privacy section
    assert "membership_tpr_at_1pct_fpr" in res.output


def test_factory_is_found_in_the_working_directory(
    files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from bastion.models.loading import load_model

    pkg = tmp_path / "usernets_16"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(
        "from bastion.models.zoo import small_cnn\n\n\ndef build():\n"
        "    return small_cnn((1, 8, 8), 10, width=8)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    clf = load_model(files["weights"], input_shape=(1, 8, 8), factory="usernets_16.nets:build")
    assert clf.num_classes == 10
    from bastion.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="cannot be imported"):
        load_model(files["weights"], input_shape=(1, 8, 8), factory="nowhere_16.nets:build")


def test_missing_mnist_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from bastion.data import load_mnist
    from bastion.errors import InputError

    monkeypatch.setenv("BASTION_MNIST_DIR", str(tmp_path))  # an empty folder, far from shared/
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"BASTION_MNIST_DIR.*--data digits"):
        load_mnist()
