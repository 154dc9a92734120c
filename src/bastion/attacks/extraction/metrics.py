"""Metrics of a stolen model: fidelity to the victim and transfer of adversarial examples.

- :func:`fidelity` — the fraction of inputs on which the surrogate's label equals the victim's.
- :func:`transfer_rate` — adversarial examples crafted with a white-box evasion attack (PGD by
  default) on the surrogate, then shown to the victim: the fraction of the inputs the victim
  classified correctly that it now gets wrong. A faithful surrogate makes a black-box victim
  open to white-box attacks (Papernot et al. 2017).

The victim's answers here are measurements, not the adversary's: they are taken unmetered.

Example
-------
>>> import torch
>>> from torch import nn
>>> from bastion.models import TorchClassifier
>>> from bastion.attacks.extraction import fidelity
>>> net = nn.Linear(4, 3)
>>> victim = TorchClassifier(net, input_shape=(4,), num_classes=3)
>>> fidelity(net, victim, torch.rand(10, 4))
1.0
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from bastion.attacks.evasion.base import EvasionAttack
from bastion.attacks.extraction.base import ExtractionResult, _check_x, _victim_labels
from bastion.errors import InputError
from bastion.models.base import Classifier, check_labels
from bastion.models.torch_model import TorchClassifier

__all__ = ["TransferResult", "fidelity", "transfer_rate"]

Surrogate = nn.Module | Classifier | ExtractionResult


@dataclass(frozen=True)
class TransferResult:
    """Transfer of adversarial examples from a surrogate to the victim."""

    attack: str
    eps: float | None
    n: int
    victim_correct: int
    surrogate_success_rate: float
    transfer_rate: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _as_classifier(surrogate: Surrogate, victim: Classifier) -> Classifier:
    if isinstance(surrogate, ExtractionResult):
        return surrogate.surrogate_classifier()
    if isinstance(surrogate, nn.Module):
        return TorchClassifier(
            surrogate,
            input_shape=victim.input_shape,
            num_classes=victim.num_classes,
            bounds=victim.bounds,
        )
    return surrogate


def _labels(clf: Classifier, x: torch.Tensor) -> torch.Tensor:
    with clf.evaluation():
        return _victim_labels(clf, x)


def fidelity(surrogate: Surrogate, victim: Classifier, x: torch.Tensor) -> float:
    """Agreement of the surrogate's labels with the victim's on ``x`` (a fraction in [0, 1])."""
    xs = _check_x(x, victim, "x")
    if xs is None:  # pragma: no cover - x is required
        raise InputError("x is required")
    sur = _as_classifier(surrogate, victim)
    return float((_labels(sur, xs) == _labels(victim, xs)).float().mean())


def transfer_rate(
    surrogate: Surrogate,
    victim: Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    attack: EvasionAttack | None = None,
    eps: float = 0.1,
) -> TransferResult:
    """Craft adversarial examples on ``surrogate`` with ``attack`` (default L∞ PGD at ``eps``,
    20 steps) and measure how many fool ``victim`` (see the module docstring)."""
    xs = _check_x(x, victim, "x")
    if xs is None:  # pragma: no cover - x is required
        raise InputError("x is required")
    if not isinstance(y, torch.Tensor):
        raise InputError(f"y must be a torch.Tensor of labels, got {type(y).__name__}")
    check_labels(y, victim.num_classes, xs.shape[0])
    y = y.long().cpu()
    if attack is None:
        from bastion.attacks.evasion import PGD

        attack = PGD(eps=eps, steps=20, random_start=False)
    sur = _as_classifier(surrogate, victim)
    res = attack.generate(sur, xs, y)
    correct = _labels(victim, xs) == y
    fooled = _labels(victim, res.x_adv) != y
    n_correct = int(correct.sum())
    rate = float((fooled & correct).sum()) / n_correct if n_correct else 0.0
    return TransferResult(
        attack=attack.name,
        eps=attack.eps,
        n=int(xs.shape[0]),
        victim_correct=n_correct,
        surrogate_success_rate=res.success_rate,
        transfer_rate=rate,
    )
