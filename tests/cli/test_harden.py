"""``bastion harden adversarial|dp|smooth`` invoked in-process on digits with tiny budgets: each
writes a before/after report whose numbers are read back from the files; bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from bastion.cli.harden import register
from bastion.data import load_digits
from bastion.models.zoo import accuracy, small_mlp

runner = CliRunner()

# tiny budgets: a 2-epoch MLP baseline, 2 epochs of hardening, 40 attacked samples
FAST = [
    "--arch", "small_mlp", "--baseline-epochs", "2", "--epochs", "2", "--max-samples", "40",
    "--steps", "3", "--max-queries", "20", "--curve-points", "0", "--quiet",
    "--attack", "pgd", "--attack", "autoattack",
]  # fmt: skip


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    root = typer.Typer()

    @root.callback()
    def _root() -> None:
        """The bastion command (only the harden group, as main.py wires it)."""

    register(root)
    return root


def _invoke(app: typer.Typer, *args: Any) -> Any:
    return runner.invoke(app, ["harden", *map(str, args)])


def _report(out: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((out / "report.json").read_text())
    return doc


def _held_out(seed: int = 0, fraction: float = 0.2, n_eval: int = 40) -> tuple[Any, Any]:
    """The samples the command evaluates on: its seeded split of digits, first ``n_eval``."""
    data = load_digits()
    n = len(data)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = round(n * fraction)
    return data.x[perm][:n_test][:n_eval], data.y[perm][:n_test][:n_eval]


def test_adversarial_training_raises_robust_accuracy(app: typer.Typer, tmp_path: Path) -> None:
    out = tmp_path / "adv"
    res = _invoke(app, "adversarial", *FAST, "--train-steps", "3", "--out", out)
    assert res.exit_code == 0, res.output
    assert "robust_accuracy" in res.output
    doc = _report(out)
    assert doc["kind"] == "hardening" and doc["defence"] == "adversarial"
    before, after = doc["before"], doc["after"]
    assert set(after["attacks"]) == {"pgd", "autoattack"}
    assert after["robust_accuracy"] <= min(a["robust_accuracy"] for a in after["attacks"].values())
    assert after["robust_accuracy"] > before["robust_accuracy"]
    assert after["clean_accuracy"] >= after["robust_accuracy"]
    assert doc["summary"]["robust_accuracy"]["change"] == pytest.approx(
        after["robust_accuracy"] - before["robust_accuracy"]
    )
    assert doc["training"]["report"]["method"] == "pgd"
    assert doc["training"]["report"]["epochs_run"] >= 1
    # the saved weights are the model that was evaluated
    net = small_mlp(64, 10)
    net.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    x, y = _held_out()
    assert accuracy(net, x, y) == pytest.approx(after["clean_accuracy"])
    html = (out / "report.html").read_text()
    assert "Adversarial training" in html and "autoattack" in html


def test_dp_reports_epsilon_within_the_target(app: typer.Typer, tmp_path: Path) -> None:
    out = tmp_path / "dp"
    res = _invoke(app, "dp", *FAST, "--epochs", "5", "--target-epsilon", "2", "--out", out)
    assert res.exit_code == 0, res.output
    doc = _report(out)
    before, after = doc["before"], doc["after"]
    privacy = doc["training"]["privacy"]
    assert before["epsilon"] is None  # the non-private baseline has no finite guarantee
    assert 1.5 < after["epsilon"] <= 2.0
    assert after["epsilon"] == privacy["epsilon"] == doc["summary"]["epsilon"]["after"]
    assert privacy["noise_multiplier"] > 0.5 and privacy["steps"] >= 20
    assert "fresh weights" in doc["training"]["initialisation"]
    assert after["clean_accuracy"] > 0.6  # far above chance (0.1) despite the noise
    assert "privacy" in (out / "report.html").read_text()


def test_smooth_raises_certified_accuracy(app: typer.Typer, tmp_path: Path) -> None:
    out = tmp_path / "smooth"
    res = _invoke(
        app, "smooth", *FAST, "--epochs", "4", "--sigma", "0.5", "--eps", "0.25",
        "--n0", "20", "--n", "300", "--out", out,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = _report(out)
    before, after = doc["before"]["certified"], doc["after"]["certified"]
    assert after["radius"] == 0.25 and after["sigma"] == 0.5
    assert after["certified_accuracy"] > before["certified_accuracy"] + 0.05
    curve = [p["certified_accuracy"] for p in after["curve"]]
    assert curve == sorted(curve, reverse=True) and curve[0] == after["accuracy"]
    assert doc["summary"]["certified_accuracy"]["after"] == after["certified_accuracy"]
    assert doc["threat"]["norm"] == "l2"
    assert "Certified accuracy" in (out / "report.html").read_text()


def test_baseline_from_a_state_dict_and_factory(
    app: typer.Typer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "harden_factory_mod.py").write_text(
        "from bastion.models.zoo import small_mlp\n\ndef build():\n    return small_mlp(64, 10)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    torch.save(small_mlp(64, 10).state_dict(), tmp_path / "untrained.pt")
    out = tmp_path / "from-model"
    res = _invoke(
        app, "smooth", "--model", tmp_path / "untrained.pt", "--factory",
        "harden_factory_mod:build", "--epochs", "3", "--max-samples", "30", "--attack", "pgd",
        "--steps", "3", "--curve-points", "0", "--n0", "10", "--n", "100", "--quiet",
        "--out", out,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = _report(out)
    assert doc["model"]["baseline"] == "loaded" and doc["model"]["factory"] is not None
    # an untrained baseline is near chance; three epochs of noisy training fix that
    assert doc["before"]["clean_accuracy"] < 0.3
    assert doc["after"]["clean_accuracy"] > doc["before"]["clean_accuracy"] + 0.3


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    np.savez(d / "flat.npz", x=rng.random((50, 6)).astype(np.float32), y=rng.integers(0, 2, 50))
    np.savez(
        d / "pixels.npz",
        x=rng.integers(0, 255, (50, 1, 8, 8), dtype=np.uint8),
        y=rng.integers(0, 2, 50),
    )
    np.savez(d / "few.npz", x=rng.random((2, 6)).astype(np.float32), y=np.array([0, 1]))
    (d / "garbage.pt").write_bytes(b"not a model")
    (d / "data.txt").write_text("1,2,3")
    return {p.stem: p for p in d.iterdir()}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["adversarial", "--data", "missing.npz"], "not found"),
        (["adversarial", "--data", "{data}"], "digits, mnist, an .npz"),
        (["adversarial", "--data", "{flat}"], "use --arch small_mlp"),
        (["smooth", "--data", "{pixels}"], "divide by 255"),
        (["dp", "--data", "{few}", "--arch", "small_mlp"], "too few"),
        (["adversarial", "--arch", "resnet"], "--arch must be"),
        (["adversarial", "--max-samples", "0"], "--max-samples"),
        (["adversarial", "--eps", "-1"], "--eps"),
        (["adversarial", "--method", "fgsm"], "method"),
        (["adversarial", "--attack", "nope"], "unknown attack"),
        (["dp", "--accountant", "magic"], "accountant"),
        (["smooth", "--sigma", "0"], "--sigma"),
        (["smooth", "--alpha", "1.5"], "--alpha"),
        (["smooth", "--factory", "mod:fn"], "--factory needs --model"),
        (["smooth", "--model", "{garbage}"], "garbage.pt"),
        (["adversarial", "--test-fraction", "1"], "--test-fraction"),
    ],
)
def test_bad_input_exits_2_without_writing(
    app: typer.Typer, tmp_path: Path, bad_files: dict[str, Path], args: list[str], message: str
) -> None:
    args = [a.format(**{k: str(v) for k, v in bad_files.items()}) for a in args]  # {stem}
    out = tmp_path / "out"
    res = _invoke(app, *args, "--out", out, "--quiet")
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split())
    assert not out.exists()


def test_same_seed_same_report_and_weights(app: typer.Typer, tmp_path: Path) -> None:
    tiny = [
        "smooth", "--arch", "small_mlp", "--baseline-epochs", "1", "--epochs", "1",
        "--max-samples", "10", "--attack", "fgsm", "--curve-points", "0", "--n0", "10",
        "--n", "50", "--quiet",
    ]  # fmt: skip
    docs, weights = [], []
    for run in ("a", "b", "c"):
        seed = "1" if run == "c" else "0"
        res = _invoke(app, *tiny, "--seed", seed, "--out", tmp_path / run)
        assert res.exit_code == 0, res.output
        docs.append(_report(tmp_path / run))
        weights.append(torch.load(tmp_path / run / "model.pt", weights_only=True))
    assert docs[0]["before"] == docs[1]["before"] and docs[0]["after"] == docs[1]["after"]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def test_adversarial_training_diagnostics_reach_the_report(
    app: typer.Typer, tmp_path: Path
) -> None:
    # eps 0.45 is beyond the median half-distance between digits of different classes (~0.34)
    out = tmp_path / "diag"
    res = _invoke(
        app, "adversarial", *FAST, "--train-steps", "1", "--eps", "0.45", "--epochs", "1",
        "--schedule", "constant", "--warmup-eps-epochs", "0", "--out", out,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = _report(out)
    diags = doc["training"]["report"]["diagnostics"]
    assert diags and diags[0]["code"] == "eps-too-large"
    assert doc["training"]["report"]["schedule"] == "constant"
    assert doc["training"]["report"]["warmup_steps"] == 0
    finding = doc["training"]["findings"][0]
    assert finding["id"] == "adversarial-training.eps-too-large"
    assert finding["remediation"].startswith("lower eps")
    assert any(w.startswith("adversarial training: eps 0.45") for w in doc["warnings"])
    assert "Likely cause" in res.output and "adversarial training: eps 0.45" in res.output
    html = (out / "report.html").read_text()
    assert "eps too large for the data&#39;s scale" in html or "eps too large" in html

