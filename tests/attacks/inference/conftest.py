"""Fixtures of the inference-attack tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from bastion.models.zoo import small_mlp, train_classifier

FitMLP = Callable[..., nn.Module]


def _fit_mlp(
    x: torch.Tensor, y: torch.Tensor, *, hidden: int = 64, seed: int = 0, **kwargs: Any
) -> nn.Module:
    """A ``small_mlp`` initialised *and* trained under ``seed`` (independent of test order)."""
    torch.manual_seed(seed)
    net = small_mlp(x[0].numel(), 10, hidden=hidden)
    return train_classifier(net, x, y, seed=seed, **kwargs)


@pytest.fixture(scope="session")
def fit_mlp() -> FitMLP:
    return _fit_mlp
