"""PGD-AT and TRADES: robustness gained on real data, early stopping, checkpoints, validation.

Most robustness tests run on scikit-learn digits (8×8) at eps 0.2; one runs the issue's bar
at small budget on MNIST at eps 0.3 (about 30 s; the full run is in the benchmark).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bastion.attacks.evasion import PGD
from bastion.attacks.evasion._common import ascent_step, maximise_loss
from bastion.defences.training import AdversarialTrainer, AdversarialTrainingReport, EpochStats
from bastion.errors import ConfigurationError, InputError, ModelError
from bastion.models import TorchClassifier
from bastion.models.zoo import accuracy, small_cnn, train_classifier
from bastion.threat import Norm

DIGITS_EPS = 0.2
Split = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _robust_accuracy(module: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> float:
    """Bastion's PGD, 40 steps (more than training), fresh random start, another seed."""
    clf = TorchClassifier(module, input_shape=tuple(x.shape[1:]), num_classes=10)
    return PGD(eps=eps, steps=40, seed=1234).generate(clf, x, y).robust_accuracy


def _cnn(shape: tuple[int, int, int], width: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return small_cnn(shape, 10, width=width)


def _digits_trainer(method: str, **kw: Any) -> AdversarialTrainer:
    args: dict[str, Any] = dict(
        method=method,
        eps=DIGITS_EPS,
        steps=5,
        epochs=7,
        warmup_eps_epochs=2,
        batch_size=32,
        lr=2e-3,
        patience=None,
        val_steps=10,
        seed=0,
    )
    args.update(kw)
    return AdversarialTrainer(**args)


@pytest.fixture(scope="module")
def standard_robust(digits_split: Split) -> float:
    x, y, xt, yt = digits_split
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = train_classifier(_cnn((1, 8, 8)), x, y, epochs=8, batch_size=32, lr=2e-3)
        clean = accuracy(model, xt, yt)
        robust = _robust_accuracy(model, xt, yt, DIGITS_EPS)
    finally:
        torch.set_num_threads(saved)
    assert clean > 0.9  # the baseline is a good classifier...
    assert robust < 0.1  # ...with near-zero robustness
    return robust


@pytest.mark.parametrize("method", ["pgd", "trades"])
def test_adversarial_training_raises_robust_accuracy(
    method: str, digits_split: Split, standard_robust: float
) -> None:
    x, y, xt, yt = digits_split
    model = _cnn((1, 8, 8))
    report = _digits_trainer(method).fit(model, (x, y), val=(xt[:200], yt[:200]))
    clean = accuracy(model, xt, yt)
    robust = _robust_accuracy(model, xt, yt, DIGITS_EPS)
    assert clean > 0.85
    assert robust > 0.35
    assert robust - standard_robust > 0.3
    assert not model.training
    assert report.method == method and report.epochs_run == 7
    assert report.best_robust_accuracy is not None and report.best_robust_accuracy > 0.3
    # the history's validation numbers come from the trainer's own PGD and are sane
    last = report.history[-1]
    assert last.val_clean_accuracy is not None and last.val_robust_accuracy is not None
    assert last.val_robust_accuracy < last.val_clean_accuracy


def test_mnist_eps_03_pgd_at_well_above_half() -> None:
    from bastion.data import load_mnist

    data = load_mnist()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    x, y = data.x[perm], data.y[perm]
    xtr, ytr, xte, yte = x[:2000], y[:2000], x[8000:8500], y[8000:8500]
    base = train_classifier(_cnn((1, 28, 28)), xtr, ytr, epochs=5, batch_size=32, lr=2e-3)
    model = _cnn((1, 28, 28))
    AdversarialTrainer(
        eps=0.3, steps=5, epochs=6, warmup_eps_epochs=2, batch_size=32, lr=2e-3, patience=None
    ).fit(model, (xtr, ytr))
    assert _robust_accuracy(base, xte, yte, 0.3) < 0.1
    assert _robust_accuracy(model, xte, yte, 0.3) > 0.5


def test_defaults_deliver_on_a_small_unseen_setup() -> None:
    """The defaults (learning-rate schedule and eps warm-up chosen from the planned steps),
    nothing tuned: a width-8 batch-norm CNN on 1,000 MNIST images downsampled to 14×14, eps
    0.2, 3 PGD steps, 3 epochs of batch 64 (48 optimiser steps). Measured over seeds 0–2: clean
    64–70%, robust 13.8–16.4% under PGD-20; the previous defaults (cosine to zero, no warm-up)
    reached clean 37–40%, robust 4.0–4.8% (seeds 0–1) and fail both bounds."""
    import torch.nn.functional as F

    from bastion.data import load_mnist

    data = load_mnist()
    x, y = F.avg_pool2d(data.x, 2), data.y
    xtr, ytr, xte, yte = x[:1000], y[:1000], x[9500:], y[9500:]
    torch.manual_seed(0)
    model = small_cnn((1, 14, 14), 10, width=8, batch_norm=True)
    report = AdversarialTrainer(eps=0.2, steps=3, epochs=3, batch_size=64).fit(model, (xtr, ytr))
    assert report.schedule == "constant" and report.warmup_steps == 7
    clf = TorchClassifier(model, input_shape=(1, 14, 14), num_classes=10)
    robust = PGD(eps=0.2, steps=20, step_size=0.025, seed=1234).generate(clf, xte, yte)
    assert accuracy(model, xte, yte) > 0.55
    assert robust.robust_accuracy > 0.10


# ---------------------------------------------------------------- training loop mechanics


def _tiny() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(96, 6, generator=g)
    return x, (x[:, 0] + x[:, 1] > 1).long()


def _linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))


def _scripted(monkeypatch: pytest.MonkeyPatch, robust: list[float]) -> None:
    """Make validation return the given robust accuracies, epoch after epoch."""
    values = iter(robust)

    def fake(self: AdversarialTrainer, *a: Any, **k: Any) -> tuple[float, float]:
        return 0.9, next(values)

    monkeypatch.setattr(AdversarialTrainer, "evaluate", fake)


def _weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_early_stopping_restores_best_and_checkpoints(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    x, y = _tiny()
    _scripted(monkeypatch, [0.2, 0.5, 0.4, 0.45, 0.9])
    trainer = AdversarialTrainer(
        eps=0.05, steps=2, epochs=5, batch_size=32, lr=0.05, patience=2, checkpoint_dir=tmp_path
    )
    model = _linear()
    report = trainer.fit(model, (x, y), val=(x, y))
    assert report.epochs_run == 4  # epochs 3 and 4 did not beat epoch 2: stop
    assert report.best_epoch == 2 and report.best_robust_accuracy == 0.5
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert best["epoch"] == 2 and last["epoch"] == 4
    assert len(last["history"]) == 4
    for k, v in model.state_dict().items():
        assert torch.equal(v, best["model"][k])  # the best weights were restored
    assert any(not torch.equal(best["model"][k], last["model"][k]) for k in best["model"])
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporaries


def test_without_patience_all_epochs_run_and_best_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _tiny()
    _scripted(monkeypatch, [0.3, 0.7, 0.1, 0.2])
    model = _linear()
    report = AdversarialTrainer(
        eps=0.05, steps=2, epochs=4, batch_size=32, lr=0.05, patience=None
    ).fit(model, (x, y), val=(x, y))
    assert report.epochs_run == 4 and report.best_epoch == 2


def test_without_val_the_last_epoch_is_kept(tmp_path: Path) -> None:
    x, y = _tiny()
    model = _linear()
    report = AdversarialTrainer(
        eps=0.05, steps=2, epochs=3, batch_size=32, lr=0.05, checkpoint_dir=tmp_path
    ).fit(model, (x, y))
    assert report.epochs_run == 3 and report.best_epoch == 3
    assert report.best_robust_accuracy is None
    assert report.history[0].val_robust_accuracy is None
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, last["model"][k])


@pytest.mark.parametrize("method", ["pgd", "trades"])
def test_deterministic_under_seed(method: str) -> None:
    x, y = _tiny()
    states = []
    for seed in (3, 3, 4):
        model = _linear()
        AdversarialTrainer(
            method=method, eps=0.1, steps=3, epochs=2, batch_size=16, lr=0.05, seed=seed
        ).fit(model, (x, y))
        states.append(_weights(model))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert any(not torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_dataloader_training_and_report_serialises() -> None:
    x, y = _tiny()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)
    model = _linear()
    before = accuracy(model, x, y)
    report = AdversarialTrainer(
        method="trades", eps=0.02, steps=2, epochs=8, lr=0.05, optimizer="sgd", schedule="step"
    ).fit(model, loader, val=(x, y))
    assert isinstance(report, AdversarialTrainingReport)
    assert isinstance(report.history[0], EpochStats)
    assert accuracy(model, x, y) > max(before, 0.75)
    d = json.loads(json.dumps(report.to_dict()))
    assert d["method"] == "trades" and d["norm"] == "linf" and len(d["history"]) == 8


def test_eps_warmup_ramps_linearly() -> None:
    trainer = AdversarialTrainer(eps=0.3, epochs=4, warmup_eps_epochs=2)
    per_epoch = 10
    ramp = trainer.warmup_steps(4 * per_epoch, per_epoch)
    assert ramp == 20
    values = [trainer._eps_at(s, ramp) for s in (0, 9, 19, 25)]
    assert values == pytest.approx([0.015, 0.15, 0.3, 0.3])
    off = AdversarialTrainer(eps=0.3, warmup_eps_epochs=0)
    assert off.warmup_steps(100, 10) == 0 and off._eps_at(0, 0) == 0.3
    half = AdversarialTrainer(eps=0.3, epochs=4, warmup_eps_epochs=0.5)
    assert half.warmup_steps(40, 10) == 5


def test_automatic_warmup_is_a_share_of_the_planned_steps() -> None:
    from bastion.defences.training.adversarial import AUTO_WARMUP_FRACTION

    trainer = AdversarialTrainer(eps=0.3)  # warmup_eps_epochs=None: automatic
    for total in (24, 96, 480, 12000):
        assert trainer.warmup_steps(total, 24) == round(AUTO_WARMUP_FRACTION * total)


def test_learning_rate_schedules() -> None:
    cos = AdversarialTrainer(eps=0.1, schedule="cosine")._lr_factor(100)
    assert cos(0) == 1.0 and cos(50) == pytest.approx(0.5) and cos(100) == pytest.approx(0.0)
    step = AdversarialTrainer(eps=0.1, schedule="step")._lr_factor(100)
    assert (step(10), step(60), step(90)) == (1.0, 0.1, 0.01)
    assert AdversarialTrainer(eps=0.1, schedule="constant")._lr_factor(100)(77) == 1.0
    lin = AdversarialTrainer(eps=0.1, schedule="linear")._lr_factor(100)
    assert (lin(50), lin(75), lin(100)) == (1.0, 1.0, 0.0) and lin(90) == pytest.approx(0.4)


def test_automatic_schedule_follows_the_planned_steps() -> None:
    from bastion.defences.training.adversarial import AUTO_LONG_STEPS

    auto = AdversarialTrainer(eps=0.1)
    assert auto.resolved_schedule(AUTO_LONG_STEPS - 1) == "constant"
    assert auto.resolved_schedule(AUTO_LONG_STEPS) == "cosine"
    assert auto._lr_factor(100)(90) == 1.0  # a short run keeps its learning rate
    assert auto._lr_factor(4 * AUTO_LONG_STEPS)(2 * AUTO_LONG_STEPS) == pytest.approx(0.5)
    assert AdversarialTrainer(eps=0.1, schedule="step").resolved_schedule(10) == "step"


def test_perturb_stays_in_ball_and_bounds_l2() -> None:
    x, y = _tiny()
    trainer = AdversarialTrainer(eps=0.5, norm="l2", steps=5)
    model = _linear()
    x_adv = trainer.perturb(model, x, y, generator=torch.Generator().manual_seed(0))
    assert float((x_adv - x).norm(dim=1).max()) <= 0.5 + 1e-5
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert not torch.equal(x_adv, x)


def test_maximise_loss_reaches_the_closed_form_corner() -> None:
    # loss = w·x is maximised over the L∞ ball ∩ [0, 1] at clip(x + eps·sign(w), 0, 1)
    w = torch.tensor([1.0, -2.0, 0.5, -0.1])
    x = torch.tensor([[0.5, 0.5, 0.95, 0.02], [0.1, 0.9, 0.5, 0.5]])
    out = maximise_loss(
        lambda xa: xa @ w,
        x,
        x.clone(),
        norm=Norm.LINF,
        eps=0.1,
        step_size=0.04,
        steps=5,
        bounds=(0.0, 1.0),
    )
    expected = (x + 0.1 * w.sign()).clamp(0, 1)
    assert torch.allclose(out, expected, atol=1e-6)
    # L2: the maximiser is x + eps·w/‖w‖ (interior points here)
    out2 = maximise_loss(
        lambda xa: xa @ w,
        x,
        x.clone(),
        norm=Norm.L2,
        eps=0.05,
        step_size=0.02,
        steps=10,
        bounds=(-5.0, 5.0),
    )
    assert torch.allclose(out2, x + 0.05 * w / w.norm(), atol=1e-5)


def test_ascent_step_negative_step_descends() -> None:
    x = torch.full((1, 3), 0.5)
    g = torch.tensor([[1.0, -1.0, 0.0]])
    up = ascent_step(x, g, x, norm=Norm.LINF, eps=0.1, step_size=0.05, bounds=(0.0, 1.0))
    down = ascent_step(x, g, x, norm=Norm.LINF, eps=0.1, step_size=-0.05, bounds=(0.0, 1.0))
    assert torch.allclose(up, torch.tensor([[0.55, 0.45, 0.5]]))
    assert torch.allclose(down, torch.tensor([[0.45, 0.55, 0.5]]))


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs",
    [
        {"eps": 0.0},
        {"eps": -0.1},
        {"eps": math.nan},
        {"eps": 0.1, "method": "fgsm"},
        {"eps": 0.1, "norm": "l1"},
        {"eps": 0.1, "steps": 0},
        {"eps": 0.1, "steps": 2.5},
        {"eps": 0.1, "step_size": 0.0},
        {"eps": 0.1, "beta": -1.0},
        {"eps": 0.1, "epochs": 0},
        {"eps": 0.1, "lr": 0.0},
        {"eps": 0.1, "optimizer": "rmsprop"},
        {"eps": 0.1, "momentum": 1.0},
        {"eps": 0.1, "weight_decay": -1e-4},
        {"eps": 0.1, "batch_size": 0},
        {"eps": 0.1, "schedule": "exponential"},
        {"eps": 0.1, "warmup_eps_epochs": -1},
        {"eps": 0.1, "warmup_eps_epochs": math.inf},
        {"eps": 0.1, "warmup_eps_epochs": True},
        {"eps": 0.1, "epochs": 2, "warmup_eps_epochs": 3},
        {"eps": 0.1, "val_steps": 0},
        {"eps": 0.1, "patience": 0},
        {"eps": 0.1, "bounds": (1.0, 0.0)},
    ],
)
def test_bad_parameters_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        AdversarialTrainer(**kwargs)


def test_bad_inputs_rejected() -> None:
    x, y = _tiny()
    trainer = AdversarialTrainer(eps=0.1, epochs=1)
    with pytest.raises(InputError):
        trainer.fit(_linear(), (x, y[:10]))
    with pytest.raises(InputError):
        trainer.fit(_linear(), (x, y.float()))
    with pytest.raises(InputError):
        trainer.fit(_linear(), (x, y), val=(x[:5], y))
    with pytest.raises(InputError):
        trainer.fit(_linear(), x)  # type: ignore[arg-type]
    frozen = _linear().requires_grad_(False)
    with pytest.raises(ModelError):
        trainer.fit(frozen, (x, y))


def test_repr_is_stable() -> None:
    r = repr(AdversarialTrainer(method="trades", eps=0.3, steps=10))
    assert r.startswith("AdversarialTrainer(method='trades', eps=0.3, norm='linf', steps=10")
    assert "step_size=0.075" in r


class _ViewNet(nn.Module):
    """A CNN whose forward ``view``s its features: channels-last tensors break it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.fc(h.view(h.shape[0], -1))


def test_channels_last_is_transparent(digits_split: Split) -> None:
    x, y = digits_split[0][:96], digits_split[1][:96]
    states = []
    for cl in (False, True, None):
        model = _cnn((1, 8, 8), width=4)
        AdversarialTrainer(
            eps=0.1, steps=2, epochs=1, batch_size=32, lr=0.01, channels_last=cl
        ).fit(model, (x, y))
        assert next(model.parameters()).is_contiguous()  # handed back in the contiguous format
        states.append(_weights(model))
    for other in states[1:]:
        assert all(torch.allclose(states[0][k], other[k], atol=1e-5) for k in states[0])


def test_channels_last_falls_back_for_modules_that_reject_it(digits_split: Split) -> None:
    x, y = digits_split[0][:64], digits_split[1][:64]
    torch.manual_seed(0)
    model = _ViewNet()
    report = AdversarialTrainer(eps=0.1, steps=2, epochs=1, batch_size=32).fit(model, (x, y))
    assert report.epochs_run == 1 and model.conv.weight.is_contiguous()
    with pytest.raises(ModelError, match="channels-last"):
        AdversarialTrainer(eps=0.1, steps=2, epochs=1, channels_last=True).fit(_ViewNet(), (x, y))
