"""Digits split shared by the DP-training tests; one torch thread for the cheap-AT tests."""

from __future__ import annotations

from collections.abc import Iterator

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


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run the test on one torch thread (restored afterwards)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
