"""Training diagnostics of adversarial training: each sign (eps too large for the data's scale,
training accuracy near chance, robust accuracy not rising) is raised on a run built to show it,
with its cause and fix, logged as a warning and kept in the report; a healthy run raises none.

Small runs on scikit-learn digits (8×8) with a one-hidden-layer MLP: a second or two each.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
from torch import nn

from bastion.defences.training import AdversarialTrainer, EpochStats
from bastion.defences.training.adversarial import _Monitor, diagnostic_finding
from bastion.models.zoo import small_mlp

Split = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return small_mlp(64, 10)


def _fit(split: Split, *, val: bool = False, n: int = 600, **kw: Any) -> Any:
    x, y, xt, yt = split
    args: dict[str, Any] = dict(eps=0.1, steps=3, epochs=3, batch_size=64, lr=3e-3, patience=None)
    args.update(kw)
    return AdversarialTrainer(**args).fit(
        _mlp(), (x[:n], y[:n]), val=(xt[:150], yt[:150]) if val else None
    )


def _codes(report: Any) -> list[str]:
    return [d.code for d in report.diagnostics]


def test_a_healthy_run_raises_nothing(
    digits_split: Split, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "bastion.defences.training.adversarial"):
        report = _fit(digits_split, val=True, epochs=4)
    assert report.diagnostics == ()
    assert not caplog.records
    assert report.history[-1].val_robust_accuracy > report.history[0].val_robust_accuracy


@pytest.mark.parametrize("eps", [0.3, 0.6])
def test_eps_too_large_for_the_data(
    eps: float, digits_split: Split, caplog: pytest.LogCaptureFixture
) -> None:
    # digits: median half-distance to another class ~0.34 in L∞; 0.6 is beyond half the range
    with caplog.at_level(logging.WARNING, "bastion.defences.training.adversarial"):
        report = _fit(digits_split, eps=eps, epochs=1, steps=1, n=300)
    assert "eps-too-large" in _codes(report)
    diag = report.diagnostics[0]
    assert diag.code == "eps-too-large" and diag.epoch == 0
    assert "lower eps" in diag.fix
    expected = "range" if eps == 0.6 else "half-distance"
    assert expected in diag.message
    assert any("eps-too-large" not in r.message and expected in r.message for r in caplog.records)
    assert report.to_dict()["diagnostics"][0]["code"] == "eps-too-large"


def test_eps_within_the_scale_is_not_flagged(digits_split: Split) -> None:
    assert "eps-too-large" not in _codes(_fit(digits_split, eps=0.15, epochs=1, steps=1, n=300))


def test_training_near_chance_and_robust_accuracy_not_rising(digits_split: Split) -> None:
    # eps is fine for the data, but a learning rate this small never moves the weights
    report = _fit(digits_split, lr=1e-7, epochs=5, warmup_eps_epochs=0, batch_size=16, n=400)
    codes = _codes(report)
    assert "near-chance" in codes and "robust-not-rising" in codes
    assert "eps-too-large" not in codes
    near = next(d for d in report.diagnostics if d.code == "near-chance")
    assert near.epoch == 2  # after the first epochs, not during the first
    assert "full eps from the first step" in near.cause  # no warm-up was used
    assert "warmup_eps_epochs" in near.fix and "lr" in near.fix
    flat = next(d for d in report.diagnostics if d.code == "robust-not-rising")
    assert flat.epoch == 3 and "learning rate" in flat.cause  # epochs 1-3 at full eps


def test_a_one_epoch_run_is_judged_after_its_epoch(digits_split: Split) -> None:
    short = _fit(digits_split, lr=1e-7, epochs=1)
    assert _codes(short) == ["near-chance"]
    assert "the run is short: 10 optimiser steps" in short.diagnostics[0].cause
    assert short.diagnostics[0].fix.startswith("train for more epochs")
    assert "near-chance" not in _codes(_fit(digits_split, epochs=1, eps=0.05))


def _stats(epoch: int, robust: float, loss: float) -> EpochStats:
    return EpochStats(epoch, loss, 0.5, 0.9, robust, 1.0)


@pytest.mark.parametrize(
    ("robust", "losses", "flagged", "cause"),
    [
        ([0.20, 0.205, 0.20, 0.21], [2.0, 1.6, 1.2, 0.9], True, "robust overfitting"),
        ([0.20, 0.20, 0.20], [2.0, 2.0, 1.99], True, "learning rate"),
        ([0.20, 0.25, 0.30], [2.0, 1.6, 1.2], False, ""),
        ([0.70, 0.70, 0.70], [0.5, 0.5, 0.5], False, ""),  # flat but already high
    ],
)
def test_robust_not_rising_reads_the_validation_series(
    robust: list[float], losses: list[float], flagged: bool, cause: str
) -> None:
    monitor = _Monitor(AdversarialTrainer(eps=0.1, epochs=len(robust)), ramp=0, per_epoch=1)
    monitor.count_labels(torch.arange(10))
    for i, (r, loss) in enumerate(zip(robust, losses, strict=True), start=1):
        monitor.after_epoch(_stats(i, r, loss), step=i)
    found = [d for d in monitor.found if d.code == "robust-not-rising"]
    assert bool(found) == flagged
    if flagged:
        assert cause in found[0].cause and "validation robust accuracy" in found[0].message


def test_epochs_during_the_warm_up_are_not_compared() -> None:
    monitor = _Monitor(AdversarialTrainer(eps=0.1, epochs=5), ramp=30, per_epoch=10)
    monitor.count_labels(torch.arange(10))
    for i in range(1, 4):
        monitor.after_epoch(_stats(i, 0.2, 2.0), step=10 * i)  # steps 10, 20, 30: warming up
    assert monitor.found == []
    for i in range(4, 6):
        monitor.after_epoch(_stats(i, 0.2, 2.0), step=10 * i)
    assert monitor.found == []  # only two epochs at full eps so far


def test_finding_of_a_diagnostic() -> None:
    report = AdversarialTrainer(eps=0.6, epochs=1, steps=1).fit(
        _mlp(), (torch.rand(40, 1, 8, 8), torch.arange(40) % 10)
    )
    finding = diagnostic_finding(report.diagnostics[0]).to_dict()
    assert finding["id"] == "adversarial-training.eps-too-large"
    assert finding["severity"] == "medium" and len(finding["fingerprint"]) == 16
    assert finding["remediation"].startswith("lower eps")
    assert finding["evidence"]["epoch"] == 0
