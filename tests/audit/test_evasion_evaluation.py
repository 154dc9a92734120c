from __future__ import annotations

import pytest
import torch
from torch import nn

from bastion.attacks.evasion import FGSM, PGD
from bastion.attacks.evasion.catalog import build_attack
from bastion.audit import Severity
from bastion.audit.evasion import evaluate_evasion
from bastion.errors import ConfigurationError, InputError
from bastion.models import TorchClassifier


def _clf(net: nn.Module) -> TorchClassifier:
    return TorchClassifier(net, input_shape=(1, 8, 8), num_classes=10)


def test_worst_case_curve_and_findings(digits_mlp) -> None:
    net, x, y = digits_mlp
    clf = _clf(net)
    attacks = [FGSM(eps=0.2), PGD(eps=0.2, steps=10, step_size=0.05)]
    ev = evaluate_evasion(clf, x, y, attacks, curve_points=4, progress=False)
    assert ev.clean_accuracy > 0.9
    per_attack = [r.robust_accuracy for r in ev.results.values()]
    assert ev.robust_accuracy <= min(per_attack)
    robust = torch.ones_like(y, dtype=torch.bool)
    for r in ev.results.values():
        robust &= r.adv_pred == y
    assert ev.robust_accuracy == pytest.approx(float(robust.float().mean()))
    assert ev.robust_accuracy < ev.clean_accuracy
    assert [round(p.eps, 6) for p in ev.curve] == [0.0, round(0.2 / 3, 6), round(0.4 / 3, 6), 0.2]
    assert ev.curve[0].robust_accuracy == pytest.approx(ev.clean_accuracy)
    assert ev.curve[-1].robust_accuracy == pytest.approx(ev.results["pgd"].robust_accuracy)
    assert ev.curve_attack == "pgd"
    assert ev.warnings == ()
    (finding,) = ev.findings
    assert finding.atlas[0] == "AML.T0043.000" and finding.owasp == ("ML01",)
    expected = Severity.HIGH if ev.robust_accuracy / ev.clean_accuracy < 0.1 else Severity.MEDIUM
    assert finding.severity in {expected, Severity.LOW}
    doc = ev.to_dict()
    assert set(doc["attacks"]["pgd"]) >= {
        "robust_accuracy",
        "success_rate",
        "median_norm",
        "queries",
        "seconds",
    }


class _Quantised(nn.Module):
    """Rounds inputs to 4 levels before the network: gradients are exactly zero (masked)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.round(x * 3) / 3)


def test_gradient_masking_is_flagged(digits_mlp) -> None:
    net, x, y = digits_mlp
    clf = _clf(_Quantised(net))
    attacks = [
        PGD(eps=0.3, steps=10, step_size=0.05),
        build_attack("square", norm="linf", eps=0.3, max_queries=200),
    ]
    ev = evaluate_evasion(clf, x[:100], y[:100], attacks, curve_points=0, progress=False)
    text = " ".join(ev.warnings)
    assert "exactly zero" in text
    assert "black-box attack square" in text
    assert "unbounded radius" in text
    assert any(f.id == "evasion.gradient-masking" for f in ev.findings)
    # the worst case is set by the black-box attack, not the masked white-box one
    assert (
        ev.robust_accuracy
        <= ev.results["square"].robust_accuracy
        < ev.results["pgd"].robust_accuracy
    )


def test_evaluation_rejects_inconsistent_attacks_and_data(digits_mlp) -> None:
    net, x, y = digits_mlp
    clf = _clf(net)
    with pytest.raises(ConfigurationError, match="at least one"):
        evaluate_evasion(clf, x, y, [], progress=False)
    with pytest.raises(ConfigurationError, match="same norm"):
        evaluate_evasion(clf, x, y, [FGSM(eps=0.1), PGD(norm="l2", eps=0.1)], progress=False)
    with pytest.raises(ConfigurationError, match="one eps"):
        evaluate_evasion(clf, x, y, [FGSM(eps=0.1), PGD(eps=0.2)], progress=False)
    with pytest.raises(ConfigurationError, match="once"):
        evaluate_evasion(clf, x, y, [FGSM(eps=0.1), FGSM(eps=0.1)], progress=False)
    with pytest.raises(InputError, match="labels"):
        evaluate_evasion(clf, x, y[:-1], [FGSM(eps=0.1)], progress=False)
