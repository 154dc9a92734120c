"""Every membership attack honours the family contract (the evasion conformance suite's twin)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from bastion.attacks.inference import (
    LabelOnlyAttack,
    LiRA,
    MembershipAttack,
    ShadowModelAttack,
    ThresholdAttack,
)
from bastion.data import load_digits
from bastion.models import TorchClassifier


def _cheap(x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
    from bastion.models.zoo import small_mlp, train_classifier

    torch.manual_seed(seed)
    return train_classifier(small_mlp(64, 10, hidden=16), x, y, epochs=2, seed=seed)


FACTORIES: dict[str, Callable[[], MembershipAttack]] = {
    "loss": lambda: ThresholdAttack(),
    "max_confidence": lambda: ThresholdAttack(signal="max_confidence"),
    "label-only": lambda: LabelOnlyAttack(n_noise=4),
    "shadow": lambda: ShadowModelAttack(n_shadows=2, train_fn=_cheap),
    "lira-offline": lambda: LiRA(n_reference=2, online=False, train_fn=_cheap),
    "lira-online": lambda: LiRA(n_reference=2, online=True, train_fn=_cheap),
}


@pytest.fixture(scope="module")
def setup(
    fit_mlp: Callable[..., nn.Module],
) -> tuple[TorchClassifier, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    data = load_digits()
    x, y = data.x[:400], data.y[:400]
    net = fit_mlp(x[:60], y[:60], epochs=5)
    clf = TorchClassifier(net, input_shape=(1, 8, 8), num_classes=10)
    return clf, x[:80], y[:80], x[100:400], y[100:400]


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_contract(
    name: str,
    setup: tuple[TorchClassifier, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    clf, x, y, xp, yp = setup
    attack = FACTORIES[name]()
    assert repr(attack) == repr(FACTORIES[name]())  # repr is stable
    if attack.needs_fit:
        attack.fit(clf, xp, yp)
    clf.module.train()
    clf.reset_queries()
    try:
        first = attack.infer(clf, x, y, membership=torch.arange(80) < 30)
        assert clf.module.training  # the model's mode is restored
    finally:
        clf.module.eval()
    assert first.queries == attack.planned_queries(clf, len(x)) == clf.queries
    assert first.scores.shape == (80,) and torch.isfinite(first.scores).all()
    second = attack.infer(clf, x, y)
    assert torch.equal(first.scores, second.scores)  # deterministic under the seed
    assert second.membership is None
    assert 0.0 <= first.auc <= 1.0
