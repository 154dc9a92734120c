"""Small seeded models shared by the input-defence tests: a digits CNN, and an MNIST CNN
trained on classes 0-4 only (5-9 serve as out-of-distribution inputs)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from bastion.data import load_digits, load_mnist
from bastion.models import TorchClassifier
from bastion.models.zoo import small_cnn, train_classifier


@dataclass(frozen=True)
class Trained:
    net: nn.Module
    clf: TorchClassifier
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_cal: torch.Tensor  # held-out clean inputs for calibration
    x_test: torch.Tensor
    y_test: torch.Tensor


@pytest.fixture(scope="session")
def digits_cnn() -> Trained:
    """small_cnn (width 8) on 1,200 digits; 300 calibration and 150 test digits."""
    data = load_digits()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    x, y = data.x[perm], data.y[perm]
    torch.manual_seed(0)
    net = train_classifier(
        small_cnn((1, 8, 8), 10, width=8), x[:1200], y[:1200], epochs=10, lr=3e-3, seed=0
    )
    clf = TorchClassifier(net, input_shape=(1, 8, 8), num_classes=10)
    return Trained(net, clf, x[:1200], y[:1200], x[1200:1500], x[1500:1650], y[1500:1650])


@pytest.fixture(scope="session")
def mnist_04() -> Trained:
    """small_cnn (width 8) on the MNIST digits 0-4 among 3,000 images; the test split holds
    all ten digits."""
    data = load_mnist()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    x, y = data.x[perm], data.y[perm]
    keep = y[:3000] < 5
    x_train, y_train = x[:3000][keep], y[:3000][keep]
    torch.manual_seed(0)
    net = train_classifier(
        small_cnn((1, 28, 28), 10, width=8), x_train, y_train, epochs=3, lr=3e-3, seed=0
    )
    clf = TorchClassifier(net, input_shape=(1, 28, 28), num_classes=10)
    rest_x, rest_y = x[3000:], y[3000:]
    cal = rest_x[:2000][rest_y[:2000] < 5]
    return Trained(net, clf, x_train, y_train, cal, rest_x[2000:3000], rest_y[2000:3000])
