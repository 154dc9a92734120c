"""The MNIST variants (slow; skipped when the MNIST idx files are absent)."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks.poisoning import LabelFlip
from bastion.data import load_mnist, shared_mnist_dir
from bastion.defences.data import ConfidentLearning, detection_score

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shared_mnist_dir() is None, reason="MNIST idx files not found"),
]


def test_confident_learning_finds_mnist_label_flips() -> None:
    data = load_mnist()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    x, y = data.x[perm][:2000], data.y[perm][:2000]
    flipped = LabelFlip(rate=0.1, seed=0).poison(x, y)
    cl = ConfidentLearning(epochs=5, seed=0).fit(flipped.x, flipped.y)
    score = detection_score(cl.flags_, flipped.mask)
    assert score.recall >= 0.8
    assert score.precision >= 0.6
