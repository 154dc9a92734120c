"""Batched reference-model training equals one-by-one training (same recipe, one loop)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from bastion.attacks.inference import DefaultTrainer, roc_curve
from bastion.attacks.inference._common import train_references
from bastion.attacks.inference._ensemble import train_ensemble
from bastion.data import load_digits
from bastion.errors import ConfigurationError, InputError
from bastion.models.zoo import small_cnn, small_mlp, train_classifier

Data = tuple[torch.Tensor, torch.Tensor]


@pytest.fixture(scope="module")
def digits() -> Data:
    data = load_digits()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    return data.x[perm], data.y[perm]


def _subsets(n: int, sizes: tuple[int, ...]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randperm(n, generator=g)[:size] for size in sizes]


def _sequential(make, x, y, subsets, seeds, **kw):  # type: ignore[no-untyped-def]
    out = []
    for s, seed in zip(subsets, seeds, strict=True):
        torch.manual_seed(seed)
        out.append(train_classifier(make(), x[s], y[s], seed=seed, **kw))
    return out


def _max_diff(a: nn.Module, b: nn.Module) -> float:
    pairs = zip(a.parameters(), b.parameters(), strict=True)
    return max(float((p - q).detach().abs().max()) for p, q in pairs)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_batched_training_equals_sequential_training(digits: Data, arch: str) -> None:
    x, y = digits
    # unequal sizes: 5, 5, 4 and 3 batches of 64 per epoch, so models sit out steps
    subsets, seeds = _subsets(len(x), (300, 290, 250, 190)), [3, 4, 5, 6]

    def make() -> nn.Module:
        if arch == "mlp":
            return small_mlp(64, 10, hidden=32)
        return small_cnn((1, 8, 8), 10, width=4)

    kw: dict[str, Any] = {"epochs": 3, "lr": 1e-2, "batch_size": 64, "weight_decay": 1e-4}
    seq = _sequential(make, x, y, subsets, seeds, **kw)
    bat = train_ensemble(make, x, y, subsets, seeds, **kw)
    for a, b in zip(seq, bat, strict=True):
        assert not b.training
        # same initialisation, batches and Adam updates: equal up to float rounding
        assert _max_diff(a, b) < 1e-4
        with torch.no_grad():
            assert torch.equal(a(x).argmax(1), b(x).argmax(1))
    # and training did something: the models differ from each other and beat chance
    assert _max_diff(bat[0], bat[1]) > 1e-2
    with torch.no_grad():
        assert float((bat[0](x).argmax(1) == y).float().mean()) > 0.3


def test_batched_reference_models_leak_membership_like_sequential_ones(digits: Data) -> None:
    """Fully trained: per-model accuracy and loss-attack membership AUC agree (to 0.01)."""
    x, y = digits
    n = 800
    subsets = [
        torch.randperm(n, generator=torch.Generator().manual_seed(k))[:200] for k in range(4)
    ]
    seeds = [10, 11, 12, 13]
    trainer = DefaultTrainer((1, 8, 8), 10, arch="mlp", hidden=128, epochs=40, lr=1e-2)
    seq = DefaultTrainer(
        (1, 8, 8), 10, arch="mlp", hidden=128, epochs=40, lr=1e-2, batched=False
    ).train_many(x[:n], y[:n], subsets, seeds)
    bat = trainer.train_many(x[:n], y[:n], subsets, seeds)
    x_test, y_test = x[n:], y[n:]
    for s, a, b in zip(subsets, seq, bat, strict=True):
        member = torch.zeros(n, dtype=torch.bool)
        member[s] = True
        with torch.no_grad():
            accs = [float((m(x_test).argmax(1) == y_test).float().mean()) for m in (a, b)]
            losses = [
                nn.functional.cross_entropy(m(x[:n]), y[:n], reduction="none") for m in (a, b)
            ]
        aucs = [roc_curve((-loss).numpy(), member.numpy()).auc for loss in losses]
        assert abs(accs[0] - accs[1]) <= 0.01 and accs[1] > 0.85
        assert abs(aucs[0] - aucs[1]) <= 0.01 and aucs[1] > 0.55  # members leak


def test_train_references_falls_back_to_one_call_per_model(digits: Data) -> None:
    x, y = digits
    calls: list[tuple[int, int]] = []

    def plain(xs: torch.Tensor, ys: torch.Tensor, seed: int) -> nn.Module:
        calls.append((len(xs), seed))
        return nn.Linear(1, 1)

    models = train_references(plain, x, y, _subsets(len(x), (10, 20)), [7, 8])
    assert len(models) == 2 and calls == [(10, 7), (20, 8)]


def test_modules_with_buffers_are_trained_one_by_one(digits: Data) -> None:
    x, y = digits

    def make() -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.Linear(16, 10))

    subsets, seeds = _subsets(len(x), (128, 100)), [1, 2]
    seq = _sequential(make, x, y, subsets, seeds, epochs=2)
    bat = train_ensemble(make, x, y, subsets, seeds, epochs=2)
    for a, b in zip(seq, bat, strict=True):
        assert _max_diff(a, b) == 0.0
        assert torch.equal(a.get_buffer("2.running_mean"), b.get_buffer("2.running_mean"))


def test_bad_arguments(digits: Data) -> None:
    x, y = digits
    with pytest.raises(InputError, match="one seed per subset"):
        train_ensemble(lambda: small_mlp(64, 10), x, y, _subsets(len(x), (10,)), [1, 2], epochs=1)
    with pytest.raises(InputError, match="at least one"):
        train_ensemble(
            lambda: small_mlp(64, 10), x, y, [torch.tensor([], dtype=torch.long)], [1], epochs=1
        )


@pytest.mark.parametrize(
    ("shape", "hidden", "expect_batched"), [((64,), 16, True), ((784,), 256, False)]
)
def test_default_trainer_batches_only_small_models(
    shape: tuple[int, ...], hidden: int, expect_batched: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``batched="auto"``: small models (<= 60k parameters) batched, large ones one by one."""
    import bastion.attacks.inference._ensemble as ensemble

    calls: list[int] = []

    def spy(*args: Any, **kwargs: Any) -> list[nn.Module]:
        calls.append(len(args[3]))
        return train_ensemble(*args, **kwargs)

    monkeypatch.setattr(ensemble, "train_ensemble", spy)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(96, *shape, generator=g), torch.randint(0, 10, (96,), generator=g)
    trainer = DefaultTrainer(shape, 10, arch="mlp", hidden=hidden, epochs=1)
    models = trainer.train_many(x, y, _subsets(96, (70, 60)), [1, 2])
    assert len(models) == 2 and calls == ([2] if expect_batched else [])
    with pytest.raises(ConfigurationError, match="batched"):
        DefaultTrainer(shape, 10, batched="sometimes")
