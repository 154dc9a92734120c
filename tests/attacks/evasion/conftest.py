"""Shared fixtures of the evasion-attack tests.

Several helpers add fixtures here: append new ones, never rewrite existing ones.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bastion.data import load_digits
from bastion.models import TorchClassifier


def _train_digits_mlp(x: torch.Tensor, y: torch.Tensor, *, seed: int = 0) -> nn.Module:
    """A small MLP on scikit-learn digits, trained deterministically (about a second on CPU).

    Trained on one thread: faster for so small a model on a shared CPU, and the same weights
    whatever thread count the calling test module set.
    """
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(x, y, seed=seed)
    finally:
        torch.set_num_threads(saved)


def _train(x: torch.Tensor, y: torch.Tensor, *, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(30):
        order = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0], 128):
            idx = order[i : i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    net.eval()
    net.zero_grad(set_to_none=True)
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@pytest.fixture(scope="session")
def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn digits, (n, 1, 8, 8) in [0, 1]: ``(x_train, y_train, x_test, y_test)``."""
    data = load_digits()
    train, test = data.split(1400)
    return train.x, train.y, test.x, test.y


@pytest.fixture(scope="session")
def digits_net(digits_split: tuple[torch.Tensor, ...]) -> nn.Module:
    """A seeded MLP trained on the first 1,400 digits (test accuracy about 0.92)."""
    x_train, y_train, _, _ = digits_split
    return _train_digits_mlp(x_train, y_train)


@pytest.fixture()
def digits_model(digits_net: nn.Module) -> TorchClassifier:
    """A fresh white-box classifier (query counter at 0) over the shared digits MLP."""
    return TorchClassifier(digits_net, input_shape=(1, 8, 8), num_classes=10)
