"""Repair: drop the flagged samples, retrain, and measure what it bought."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bastion.attacks.poisoning.metrics import attack_success_rate
from bastion.errors import InputError
from bastion.models.zoo import accuracy, train_classifier

__all__ = ["RepairResult", "repair"]


@dataclass(frozen=True)
class RepairResult:
    """Clean accuracy and backdoor success before and after retraining without the flagged
    samples (the success rates are ``None`` without a trigger). ``model`` is the retrained one."""

    n_removed: int
    n_poison_removed: int | None
    clean_accuracy_before: float
    clean_accuracy_after: float
    attack_success_before: float | None
    attack_success_after: float | None
    seconds: float
    model: nn.Module = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_removed": self.n_removed,
            "n_poison_removed": self.n_poison_removed,
            "clean_accuracy_before": self.clean_accuracy_before,
            "clean_accuracy_after": self.clean_accuracy_after,
            "attack_success_before": self.attack_success_before,
            "attack_success_after": self.attack_success_after,
            "seconds": self.seconds,
        }


def repair(
    x: torch.Tensor,
    y: torch.Tensor,
    flags: torch.Tensor,
    *,
    factory: Callable[[], nn.Module],
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    model_before: nn.Module | None = None,
    trigger: Callable[[torch.Tensor], torch.Tensor] | None = None,
    target_class: int | None = None,
    mask: torch.Tensor | None = None,
    epochs: int = 10,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
) -> RepairResult:
    """Retrain a fresh ``factory()`` model on ``(x, y)`` without the ``flags`` samples.

    ``model_before`` is the model trained on all the data (trained here with the same recipe
    when not given). With a ``trigger`` and ``target_class``, the backdoor's success rate on the
    triggered non-target test inputs is measured before and after; with the ground-truth
    ``mask``, how many poisoned samples the repair removed.
    """
    if flags.shape != y.shape or flags.dtype != torch.bool:
        raise InputError("flags must be a boolean mask with one entry per training sample")
    if (trigger is None) != (target_class is None):
        raise InputError("give both trigger and target_class, or neither")
    if bool(flags.all()):
        raise InputError("every sample is flagged: nothing would be left to train on")
    start = time.perf_counter()
    if model_before is None:
        model_before = train_classifier(
            _seeded(factory, seed), x, y, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed
        )
    keep = ~flags
    model_after = train_classifier(
        _seeded(factory, seed),
        x[keep],
        y[keep],
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
    )
    asr_before = asr_after = None
    if trigger is not None and target_class is not None:
        nontarget = x_test[y_test != target_class]
        asr_before = attack_success_rate(model_before, nontarget, trigger, target_class)
        asr_after = attack_success_rate(model_after, nontarget, trigger, target_class)
    return RepairResult(
        n_removed=int(flags.sum()),
        n_poison_removed=None if mask is None else int((flags & mask.bool()).sum()),
        clean_accuracy_before=accuracy(model_before, x_test, y_test),
        clean_accuracy_after=accuracy(model_after, x_test, y_test),
        attack_success_before=asr_before,
        attack_success_after=asr_after,
        seconds=time.perf_counter() - start,
        model=model_after,
    )


def _seeded(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``factory()`` with its weight initialisation seeded, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()
