"""Digits split shared by the DP-training tests."""

from __future__ import annotations

import pytest
import torch

from bastion.data import load_digits


@pytest.fixture(scope="module")
def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """1,400 shuffled training digits and 397 held-out ones, as ``(x, y, x_test, y_test)``."""
    data = load_digits()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    x, y = data.x[perm], data.y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]
