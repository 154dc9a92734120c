"""Fixtures shared across the whole suite."""

from __future__ import annotations

import pytest
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from bastion.data import load_digits
from bastion.models.zoo import small_mlp, train_classifier

# The suite's models are tiny: one thread is faster than two threads contending for 2 cores
# (torch's own pool and the BLAS pools behind numpy and scikit-learn alike).
torch.set_num_threads(1)
threadpool_limits(1)


@pytest.fixture(scope="session")
def digits_mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A seeded MLP trained on 1,400 shuffled digits, with 300 held-out ``(x, y)``."""
    data = load_digits()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    x, y = data.x[perm], data.y[perm]
    net = train_classifier(small_mlp(64, 10), x[:1400], y[:1400], epochs=15, lr=5e-3, seed=0)
    return net, x[1400:1700], y[1400:1700]
