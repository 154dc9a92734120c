from __future__ import annotations

import pytest
import torch
from torch import nn

from bastion.attacks.evasion import PGD
from bastion.errors import ConfigurationError, InputError, QueryBudgetExceeded
from bastion.models import Classifier, TorchClassifier


def test_preprocessing_is_applied_inside_the_classifier() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(), nn.Linear(4 * 2 * 2, 5))
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    clf = TorchClassifier(net, input_shape=(3, 2, 2), num_classes=5, preprocessing=(mean, std))
    x = torch.rand(6, 3, 2, 2)
    manual = net((x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])
    assert torch.allclose(clf.logits(x), manual, atol=1e-6)
    assert isinstance(clf, Classifier)


def test_preprocessing_rejects_wrong_channel_count_and_zero_std() -> None:
    net = nn.Flatten()
    with pytest.raises(ConfigurationError, match="per channel"):
        TorchClassifier(net, input_shape=(3, 2, 2), num_classes=12, preprocessing=([0.1, 0.2], 1.0))
    with pytest.raises(ConfigurationError, match="positive"):
        TorchClassifier(net, input_shape=(3, 2, 2), num_classes=12, preprocessing=(0.0, 0.0))


class _Exploding(nn.Module):
    """Raises on the third forward pass; has a dropout child to check per-module modes."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.drop = nn.Dropout(0.5)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls >= 3:
            raise RuntimeError("boom")
        return self.drop(self.lin(x))


def test_mode_is_restored_even_when_the_attack_raises() -> None:
    net = _Exploding()
    net.train()
    net.drop.eval()  # mixed modes must come back exactly
    clf = TorchClassifier(net, input_shape=(4,), num_classes=3)
    seen: list[bool] = []
    net.lin.register_forward_hook(lambda m, i, o: seen.append(m.training))
    with pytest.raises(RuntimeError, match="boom"):
        PGD(eps=0.1, steps=5).generate(clf, torch.rand(2, 4), torch.tensor([0, 1]))
    assert seen and not any(seen)  # attacked in eval mode
    assert net.training and net.lin.training and not net.drop.training


def test_query_counter_and_budget() -> None:
    clf = TorchClassifier(nn.Linear(4, 3), input_shape=(4,), num_classes=3, query_budget=10)
    clf.logits(torch.rand(6, 4))
    assert clf.queries == 6
    with pytest.raises(QueryBudgetExceeded, match="budget of 10"):
        clf.predict(torch.rand(5, 4))
    assert clf.queries == 6  # the refused call made no query
    with clf.unmetered():
        clf.predict(torch.rand(50, 4))
    assert clf.queries == 6


def test_bad_construction_and_batches_are_rejected() -> None:
    with pytest.raises(ConfigurationError, match=r"nn\.Module"):
        TorchClassifier("not a module", input_shape=(4,), num_classes=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="num_classes"):
        TorchClassifier(nn.Linear(4, 1), input_shape=(4,), num_classes=1)
    with pytest.raises(ConfigurationError, match="bounds"):
        TorchClassifier(nn.Linear(4, 3), input_shape=(4,), num_classes=3, bounds=(1.0, 0.0))
    clf = TorchClassifier(nn.Linear(4, 3), input_shape=(4,), num_classes=3)
    with pytest.raises(InputError, match=r"\(n, 4\)"):
        clf.logits(torch.rand(2, 5))


def test_repr_is_stable() -> None:
    clf = TorchClassifier(nn.Linear(4, 3), input_shape=(4,), num_classes=3)
    assert (
        repr(clf) == "TorchClassifier(Linear, input_shape=(4,), num_classes=3, bounds=(0.0, 1.0))"
    )
