"""Remedies follow what was already done to the model and the numbers, never advising the
hardening that was just applied."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks.evasion import PGD
from bastion.attacks.inference.base import MembershipResult
from bastion.audit.evasion import evaluate_evasion
from bastion.data import load_digits
from bastion.models import TorchClassifier
from bastion.models.zoo import small_mlp, train_classifier


@pytest.fixture(scope="module")
def clf_xy() -> tuple[TorchClassifier, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    data = load_digits()
    net = train_classifier(small_mlp(64, 10), data.x[:800], data.y[:800], epochs=3, seed=0)
    clf = TorchClassifier(net, input_shape=(1, 8, 8), num_classes=10, bounds=(0.0, 1.0))
    return clf, data.x[1500:1540], data.y[1500:1540]


def _remedy(clf_xy: tuple[TorchClassifier, torch.Tensor, torch.Tensor], eps: float,
            hardening: str | None) -> str:
    clf, x, y = clf_xy
    attack = PGD(norm="linf", eps=eps, steps=5, step_size=eps / 4)
    ev = evaluate_evasion(clf, x, y, [attack], curve_points=0, reliability_checks=False,
                          progress=False, hardening=hardening)
    return ev.findings[0].remediation


def test_remedies_depend_on_what_was_done(clf_xy) -> None:  # type: ignore[no-untyped-def]
    plain = _remedy(clf_xy, 0.3, None)
    assert "Harden the model with adversarial training" in plain
    after_at = _remedy(clf_xy, 0.3, "adversarial")
    assert "Adversarial training was applied" in after_at
    assert "Harden the model with adversarial training" not in after_at
    assert "learnt nothing" in after_at and "eps suits the data's scale" in after_at
    assert "DP-SGD protects the training data" in _remedy(clf_xy, 0.3, "dp")
    assert "Serve the smoothed classifier" in _remedy(clf_xy, 0.3, "smooth")


def test_remedies_depend_on_the_numbers(clf_xy) -> None:  # type: ignore[no-untyped-def]
    # a budget too small to matter: the model holds; no advice to harden it
    held = _remedy(clf_xy, 1e-4, None)
    assert "The model holds" in held and "Harden the model" not in held


def test_no_leak_is_not_told_to_train_with_dp() -> None:
    # scores that cannot tell members from non-members: AUC 0.5, no TPR at low FPR
    res = MembershipResult(attack="loss", params={}, scores=torch.zeros(400),
                           membership=torch.arange(400) < 200, queries=400, seconds=0.0)
    finding = res.finding()
    assert finding.severity.value == "info"
    assert "No measurable leak" in finding.remediation and "DP-SGD" not in finding.remediation
    leaky = MembershipResult(attack="loss", params={}, scores=torch.arange(400.0),
                             membership=torch.arange(400) >= 200, queries=400, seconds=0.0)
    assert "DP-SGD" in leaky.finding().remediation
