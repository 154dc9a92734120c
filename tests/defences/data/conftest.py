"""Small CNNs trained on digits with a 5% or 10% BadNets backdoor, shared by the detector tests."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from bastion.attacks.poisoning import BadNets, PoisonResult
from bastion.data import load_digits
from bastion.models.zoo import small_cnn, train_classifier


@dataclass(frozen=True)
class Backdoored:
    net: nn.Module
    attack: BadNets
    poisoned: PoisonResult
    x_test: torch.Tensor
    y_test: torch.Tensor


@pytest.fixture(scope="session")
def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    data = load_digits()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    x, y = data.x[perm], data.y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def _backdoor(
    split: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], rate: float
) -> Backdoored:
    x, y, x_test, y_test = split
    attack = BadNets(target_class=0, rate=rate, seed=0)
    poisoned = attack.poison(x, y)
    torch.manual_seed(0)
    net = train_classifier(
        small_cnn((1, 8, 8), 10), poisoned.x, poisoned.y, epochs=10, lr=3e-3, seed=0
    )
    return Backdoored(net, attack, poisoned, x_test, y_test)


@pytest.fixture(scope="session")
def backdoored(
    digits_split: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
) -> Backdoored:
    """5% poisoned (70 of 1,400; a third of the target class)."""
    return _backdoor(digits_split, 0.05)


@pytest.fixture(scope="session")
def backdoored10(
    digits_split: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
) -> Backdoored:
    """10% poisoned (140 of 1,400; about half of the target class)."""
    return _backdoor(digits_split, 0.10)
