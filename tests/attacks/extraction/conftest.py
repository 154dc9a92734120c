"""Victims for the extraction tests: a digits logistic regression and the suite's digits MLP."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from bastion.data import load_digits


@pytest.fixture(scope="session", autouse=True)
def _one_blas_thread() -> Iterator[None]:
    """BLAS threads contend badly on the shared 2-core machine: scikit-learn gets one."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="session")
def digits_split() -> tuple[torch.Tensor, torch.Tensor]:
    """Digits in the same seeded order as the root ``digits_mlp`` fixture."""
    data = load_digits()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    return data.x[perm], data.y[perm]


@pytest.fixture(scope="session")
def digits_logreg(digits_split: tuple[torch.Tensor, torch.Tensor]) -> object:
    from sklearn.linear_model import LogisticRegression

    x, y = digits_split
    xs = x[:1400].reshape(1400, -1).numpy().astype(np.float64)
    return LogisticRegression(max_iter=3000).fit(xs, y[:1400].numpy())


@pytest.fixture()
def mlp_victim(digits_mlp: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> object:
    from bastion.attacks.extraction import black_box
    from bastion.models import TorchClassifier

    net = digits_mlp[0]
    return black_box(TorchClassifier(net, input_shape=(1, 8, 8), num_classes=10))
