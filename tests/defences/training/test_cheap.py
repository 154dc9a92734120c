"""Fast (FGSM with a random start) and free (minibatch replay) adversarial training.

Robustness is measured on scikit-learn digits at eps 0.2 against a naturally trained model of
the same architecture; the catastrophic-overfitting guard is triggered by plain FGSM (no random
start, alpha = eps) at eps 0.3 on a slice of MNIST, a run that collapses: its probe shows PGD
accuracy near zero while the single-step attack's accuracy climbs.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from torch import nn

from bastion.attacks.evasion import PGD
from bastion.defences.training import AdversarialTrainer, AdversarialTrainingReport
from bastion.defences.training.cheap import (
    FastAdversarialTrainer,
    FreeAdversarialTrainer,
    OverfitGuard,
    make_adversarial_trainer,
)
from bastion.errors import ConfigurationError
from bastion.models import TorchClassifier
from bastion.models.zoo import accuracy, small_cnn, train_classifier

EPS = 0.2
pytestmark = pytest.mark.usefixtures("one_thread")
Split = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _cnn(shape: tuple[int, int, int]) -> nn.Module:
    torch.manual_seed(0)
    return small_cnn(shape, 10)


def _robust(module: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = EPS) -> float:
    clf = TorchClassifier(module, input_shape=tuple(x.shape[1:]), num_classes=10)
    return PGD(eps=eps, steps=40, seed=1234).generate(clf, x, y).robust_accuracy


@pytest.fixture(scope="module")
def natural_robust(digits_split: Split) -> float:
    x, y, xt, yt = digits_split
    torch.set_num_threads(1)
    model = train_classifier(_cnn((1, 8, 8)), x, y, epochs=5, batch_size=32, lr=2e-3)
    assert accuracy(model, xt, yt) > 0.9
    return _robust(model, xt, yt)


def test_fast_at_beats_natural_training_and_the_guard_stays_quiet(
    digits_split: Split, natural_robust: float
) -> None:
    x, y, xt, yt = digits_split
    model = _cnn((1, 8, 8))
    trainer = FastAdversarialTrainer(
        eps=EPS, epochs=4, warmup_eps_epochs=1, batch_size=32, lr=2e-3, patience=None
    )
    report = trainer.fit(model, (x, y))
    robust = _robust(model, xt, yt)
    assert accuracy(model, xt, yt) > 0.8
    assert robust > 0.25 and robust - natural_robust > 0.2
    assert isinstance(report, AdversarialTrainingReport) and report.method == "fast"
    assert report.settings["alpha"] == pytest.approx(1.25 * EPS)
    assert report.guard is not None and not report.guard["fired"]
    assert len(report.guard["checks"]) == 5  # once per epoch, and once at the start
    assert report.settings["alpha_final"] == report.settings["alpha"]
    assert "did not fire" in report.summary()


def test_free_at_beats_natural_training(digits_split: Split, natural_robust: float) -> None:
    x, y, xt, yt = digits_split
    model = _cnn((1, 8, 8))
    report = FreeAdversarialTrainer(
        eps=EPS, replays=4, epochs=8, batch_size=32, lr=2e-3, patience=None
    ).fit(model, (x, y), val=(xt[:100], yt[:100]))
    robust = _robust(model, xt, yt)
    assert accuracy(model, xt, yt) > 0.8
    assert robust > 0.25 and robust - natural_robust > 0.2
    assert report.method == "free" and report.epochs_run == 2  # 8 epochs of budget / 4 replays
    assert report.settings == {"replays": 4, "budget_epochs": 8, "passes": 2, "step": "eps"}


def test_guard_fires_on_a_run_built_to_overfit_and_rolls_back() -> None:
    from bastion.data import load_mnist

    data = load_mnist()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    x, y = data.x[perm][:500], data.y[perm][:500]
    model = _cnn((1, 28, 28))
    trainer = FastAdversarialTrainer(
        eps=0.3, alpha=0.3, random_start=False, epochs=3, warmup_eps_epochs=1, batch_size=32,
        lr=2e-3, schedule="constant", patience=None, guard=OverfitGuard(every=8),
    )  # fmt: skip
    report = trainer.fit(model, (x, y))
    guard = report.guard
    assert guard is not None and guard["fired"]
    first = guard["events"][0]
    # what it saw: PGD far below the training attack, the collapse's signature
    assert first["fgsm_accuracy"] - first["pgd_accuracy"] >= 0.15
    assert first["pgd_accuracy"] <= 0.5 * first["fgsm_accuracy"]
    # what it did: back to an earlier, good check; a smaller step from a random start
    assert first["rolled_back_to_step"] < first["step"]
    good = [c for c in guard["checks"] if c["step"] == first["rolled_back_to_step"]]
    assert good and good[-1]["fgsm_accuracy"] - good[-1]["pgd_accuracy"] < 0.15
    assert first["alpha_after"] < first["alpha_before"] == pytest.approx(0.3)
    assert report.settings["random_start_final"] and not report.settings["random_start"]
    assert report.settings["alpha_final"] < 0.3
    assert "fired" in report.summary() and "rolled back" in report.summary()
    json.dumps(report.to_dict())  # the report is JSON-clean


def test_guard_rollback_restores_the_good_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scripted probes (good, good, collapsed): the third check reloads the second's weights."""
    import bastion.defences.training.cheap as cheap

    probes = iter([0.5, 0.5, 0.6, 0.6, 0.7, 0.05])  # (training attack, PGD) per check
    monkeypatch.setattr(cheap, "_accuracy", lambda *a: next(probes))
    snapshots: list[dict[str, torch.Tensor]] = []
    real_copy = cheap._copy_state

    def spy(module: nn.Module) -> dict[str, torch.Tensor]:
        state = real_copy(module)
        snapshots.append(state)
        return state

    monkeypatch.setattr(cheap, "_copy_state", spy)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 6, generator=g)
    y = (x[:, 0] > 0.5).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    trainer = FastAdversarialTrainer(
        eps=0.1, epochs=1, batch_size=32, lr=0.05, guard=OverfitGuard(every=1)
    )
    report = trainer.fit(model, (x, y))
    assert report.guard is not None
    assert [e["rolled_back_to_step"] for e in report.guard["events"]] == [1]
    assert len(snapshots) == 2  # the collapsed state was never kept
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshots[-1][k])  # the last step was the rolled-back one


def test_free_carries_the_perturbation_across_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 6, generator=g)
    y = (x[:, 0] > 0.5).long()
    seen: list[torch.Tensor] = []
    trainer = FreeAdversarialTrainer(eps=0.1, replays=3, epochs=3, batch_size=16, lr=0.05)
    real = trainer._carried

    def spy(xb: torch.Tensor, eps: float) -> torch.Tensor:
        d = real(xb, eps)
        seen.append(d.clone())
        return d

    monkeypatch.setattr(trainer, "_carried", spy)
    torch.manual_seed(0)
    trainer.fit(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)), (x, y))
    assert len(seen) == 3  # one pass (3 epochs of budget / 3 replays) of 3 batches
    assert torch.count_nonzero(seen[0]) == 0  # starts at zero ...
    assert seen[1].abs().amax() > 0.05  # ... then carries the last batch's perturbation
    assert seen[2].shape[0] == 8 and seen[2].abs().amax() <= 0.1 + 1e-6  # fitted, in the ball


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: FastAdversarialTrainer(eps=0.1, alpha=-1), "alpha"),
        (lambda: FastAdversarialTrainer(eps=0.1, steps=3), "steps"),
        (lambda: FastAdversarialTrainer(eps=0.1, grad_align=-1), "grad_align"),
        (lambda: FastAdversarialTrainer(eps=0.1, guard="yes"), "OverfitGuard"),  # type: ignore[arg-type]
        (lambda: OverfitGuard(gap=1.5), "gap"),
        (lambda: OverfitGuard(samples=0), "samples"),
        (lambda: OverfitGuard(alpha_decay=0), "alpha_decay"),
        (lambda: FreeAdversarialTrainer(eps=0.1, replays=0), "replays"),
        (lambda: FreeAdversarialTrainer(eps=0.1, beta=1.0), "beta"),
        (lambda: FreeAdversarialTrainer(eps=-0.1), "eps"),
        (lambda: make_adversarial_trainer("fgsm", eps=0.1), "pgd"),
    ],
)
def test_bad_parameters_are_rejected(build: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        build()


def test_make_adversarial_trainer_dispatches_on_the_method() -> None:
    fast = make_adversarial_trainer("fast", eps=0.1, alpha=0.1, guard=False, epochs=2)
    free = make_adversarial_trainer("free", eps=0.1, replays=2, epochs=5)
    pgd = make_adversarial_trainer("pgd", eps=0.1, steps=3)
    assert isinstance(fast, FastAdversarialTrainer) and fast.guard is None and fast.alpha == 0.1
    assert isinstance(free, FreeAdversarialTrainer) and free.epochs == 3
    assert type(pgd) is AdversarialTrainer and pgd.steps == 3 and pgd.method == "pgd"
    assert "alpha=0.1" in repr(fast) and "replays=2" in repr(free)


@pytest.mark.parametrize("method", ["fast", "free"])
def test_deterministic_under_seed(method: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 6, generator=g)
    y = (x[:, 0] > 0.5).long()
    states = []
    for seed in (3, 3, 4):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
        make_adversarial_trainer(method, eps=0.1, epochs=2, batch_size=16, lr=0.05, seed=seed).fit(
            model, (x, y)
        )
        states.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(states[0], states[1]) and not torch.equal(states[0], states[2])
