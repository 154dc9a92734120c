"""Backdoors planted by the generators work on a real CNN trained on digits."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks.poisoning import Blend, CleanLabel, attack_success_rate
from bastion.data import load_digits
from bastion.models import TorchClassifier
from bastion.models.zoo import accuracy, small_cnn, train_classifier

Split = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@pytest.fixture(scope="module")
def split() -> Split:
    data = load_digits()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    x, y = data.x[perm], data.y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def _train(x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return train_classifier(small_cnn((1, 8, 8), 10), x, y, epochs=10, lr=3e-3, seed=seed)


def test_blended_backdoor_succeeds_and_keeps_clean_accuracy(split: Split) -> None:
    x, y, x_test, y_test = split
    attack = Blend(target_class=3, rate=0.05, alpha=0.2, seed=0)
    poisoned = attack.poison(x, y)
    net = _train(poisoned.x, poisoned.y)
    nontarget = x_test[y_test != 3]
    assert attack_success_rate(net, nontarget, attack.apply_trigger, 3) > 0.85
    assert accuracy(net, x_test, y_test) > 0.93
    clean_net = _train(x, y)
    assert attack_success_rate(clean_net, nontarget, attack.apply_trigger, 3) < 0.2


def test_clean_label_backdoor_raises_success_without_touching_labels(split: Split) -> None:
    x, y, x_test, y_test = split
    surrogate = TorchClassifier(_train(x, y, seed=1), input_shape=(1, 8, 8), num_classes=10)
    attack = CleanLabel(surrogate=surrogate, target_class=3, rate=0.08, eps=0.3, steps=20)
    poisoned = attack.poison(x, y)
    assert torch.equal(poisoned.y, y)
    assert poisoned.extra["surrogate_fooled"] > 0.9
    nontarget = x_test[y_test != 3]
    backdoored = attack_success_rate(
        _train(poisoned.x, poisoned.y), nontarget, attack.apply_trigger, 3
    )
    baseline = attack_success_rate(_train(x, y), nontarget, attack.apply_trigger, 3)
    assert backdoored > 0.3
    assert backdoored > 3 * baseline
