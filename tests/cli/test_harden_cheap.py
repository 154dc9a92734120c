"""``bastion harden adversarial --method fast|free``: the report names the method and its
settings (and, for fast AT, what the overfitting guard did); bad settings exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bastion.cli.main import app

runner = CliRunner()

TINY = [
    "--arch", "small_mlp", "--baseline-epochs", "2", "--max-samples", "40", "--steps", "3",
    "--curve-points", "0", "--quiet", "--attack", "pgd", "--eps", "0.2",
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "extra", "settings"),
    [
        ("fast", ["--epochs", "3", "--alpha", "0.2"], {"alpha": 0.2, "random_start": True}),
        ("free", ["--epochs", "6", "--replays", "3"], {"replays": 3, "passes": 2}),
    ],
)
def test_cheap_methods_harden_and_are_named_in_the_report(
    method: str, extra: list[str], settings: dict[str, object], tmp_path: Path
) -> None:
    out = tmp_path / method
    res = runner.invoke(
        app, ["harden", "adversarial", *TINY, "--method", method, *extra, "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "report.json").read_text())
    assert doc["after"]["robust_accuracy"] > doc["before"]["robust_accuracy"]
    described = doc["training"]["method"]
    assert described["name"] == method == doc["training"]["report"]["method"]
    assert described["settings"].items() >= {"eps": 0.2, **settings}.items()
    guard = doc["training"]["report"].get("guard")
    assert (guard is not None) == (method == "fast")
    html = (out / "report.html").read_text()
    assert f"Adversarial training ({method})" in html
    assert ("overfitting guard" in html) == (method == "fast")
    assert ("minibatch replay" in html) == (method == "free")


def test_pgd_report_names_its_inner_attack(tmp_path: Path) -> None:
    out = tmp_path / "pgd"
    res = runner.invoke(
        app,
        ["harden", "adversarial", *TINY, "--epochs", "1", "--train-steps", "2", "--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    method = json.loads((out / "report.json").read_text())["training"]["method"]
    assert method["name"] == "pgd" and method["settings"]["steps"] == 2
    assert "PGD-AT (Madry" in (out / "report.html").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "fast", "--alpha", "-1"], "alpha"),
        (["--method", "free", "--replays", "0"], "replays"),
        (["--method", "fgsm"], "fast"),
    ],
)
def test_bad_cheap_settings_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    res = runner.invoke(app, ["harden", "adversarial", *args, "--out", str(tmp_path / "x")])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x").exists()
