"""Empirical privacy audit of DP training with inserted canaries.

Jagielski, Ullman & Oprea, "Auditing Differentially Private Machine Learning: How Private is
Private SGD?", NeurIPS 2020, https://arxiv.org/abs/2006.07709; Nasr et al., "Adversary
Instantiation: Lower Bounds for Differentially Private Machine Learning", S&P 2021,
https://arxiv.org/abs/2101.04535.

The audit builds ``n_canaries`` out-of-distribution examples (Gaussian-noise inputs, each
with a random label), inserts a random half of them into the training set,
trains with the given :class:`~bastion.defences.training.dp.DPSGDTrainer`, and runs a
loss-threshold membership test (Yeom et al. 2018: lower loss means "member") on all canaries.
Every threshold of that test is turned into a lower bound on ε by
:func:`bastion.attacks.inference.metrics.empirical_epsilon` (Clopper–Pearson at
``confidence``). A correct DP-SGD run must give ``empirical_lower <= claimed_epsilon`` (up to
the audit's own ``1 - confidence`` failure probability); an implementation that claims an ε it
does not deliver (e.g. its noise is silently off) is caught when the bound exceeds the claim.

Canary counts bound what an audit can prove: with ``m`` canaries per side the largest possible
lower bound is about ``log(m / 3.7)`` at 95% confidence (4.2 for 250), so audits of large ε
need many canaries.

Example
-------
>>> import torch
>>> from torch import nn
>>> from bastion.defences.training.dp import DPSGDTrainer
>>> x = torch.rand(300, 6, generator=torch.Generator().manual_seed(0))
>>> y = (x[:, 0] > 0.5).long()
>>> trainer = DPSGDTrainer(target_epsilon=1.0, batch_size=60, epochs=2, lr=0.5, seed=0)
>>> report = audit_dp_training(trainer, lambda: nn.Linear(6, 2), x, y, n_canaries=40, seed=0)
>>> report.empirical_lower <= report.claimed_epsilon
True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bastion.attacks.inference.metrics import empirical_epsilon, roc_curve
from bastion.defences.training.dp import DPSGDTrainer, PrivacyReport
from bastion.errors import ConfigurationError, InputError

__all__ = ["AuditReport", "audit_dp_training", "make_canaries"]


@dataclass(frozen=True)
class AuditReport:
    """Claimed ε of a DP run next to the empirical lower bound its canaries imply."""

    claimed_epsilon: float
    empirical_lower: float
    empirical_point: float
    delta: float
    confidence: float
    n_canaries: int
    auc: float
    tpr: float
    fpr: float
    privacy: PrivacyReport

    @property
    def consistent(self) -> bool:
        """True when the audit found no evidence against the claim (lower bound ≤ claimed ε)."""
        return self.empirical_lower <= self.claimed_epsilon

    def to_dict(self) -> dict[str, Any]:
        def num(v: float) -> float | None:
            return v if math.isfinite(v) else None

        return {
            "claimed_epsilon": num(self.claimed_epsilon),
            "empirical_lower": self.empirical_lower,
            "empirical_point": num(self.empirical_point),
            "delta": self.delta,
            "confidence": self.confidence,
            "n_canaries": self.n_canaries,
            "auc": self.auc,
            "tpr": self.tpr,
            "fpr": self.fpr,
            "consistent": self.consistent,
            "privacy": self.privacy.to_dict(),
        }


def make_canaries(
    x: torch.Tensor, num_classes: int, n: int, *, scale: float = 1.0, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` out-of-distribution canaries shaped like ``x``: inputs drawn from ``N(0, scale²)``
    per feature (nearly orthogonal to each other, unlike the data) and labels uniform over
    ``num_classes``."""
    if n < 2:
        raise ConfigurationError(f"need at least 2 canaries, got {n}")
    if num_classes < 2:
        raise ConfigurationError(f"num_classes must be at least 2, got {num_classes}")
    if not (math.isfinite(scale) and scale > 0):
        raise ConfigurationError(f"scale must be positive, got {scale!r}")
    gen = torch.Generator().manual_seed(seed)
    xc = scale * torch.randn((n, *x.shape[1:]), generator=gen, dtype=x.dtype)
    yc = torch.randint(0, num_classes, (n,), generator=gen)
    return xc, yc


@torch.no_grad()
def _losses(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    device = next(module.parameters()).device
    module.eval()
    return F.cross_entropy(module(x.to(device)), y.to(device), reduction="none").cpu()


def audit_dp_training(
    trainer: DPSGDTrainer,
    make_module: Callable[[], nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    n_canaries: int = 200,
    num_classes: int | None = None,
    confidence: float = 0.95,
    seed: int = 0,
) -> AuditReport:
    """Train a fresh ``make_module()`` with ``trainer`` on ``(x, y)`` plus half of
    ``n_canaries`` canaries, and bound ε empirically from a loss test on all canaries."""
    if n_canaries < 4 or n_canaries % 2:
        raise ConfigurationError(f"n_canaries must be an even number >= 4, got {n_canaries}")
    if not 0.0 < confidence < 1.0:
        raise ConfigurationError(f"confidence must lie in (0, 1), got {confidence!r}")
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise InputError(f"x and y must be non-empty and of equal length, got {len(x)}, {len(y)}")
    k = int(num_classes) if num_classes is not None else int(y.max()) + 1
    xc, yc = make_canaries(x, k, n_canaries, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    member = torch.zeros(n_canaries, dtype=torch.bool)
    member[torch.randperm(n_canaries, generator=gen)[: n_canaries // 2]] = True
    module = make_module()
    privacy = trainer.fit(module, torch.cat([x, xc[member]]), torch.cat([y, yc[member]]))
    scores = -_losses(module, xc, yc)
    roc = roc_curve(scores, member)
    half = n_canaries // 2
    bound = empirical_epsilon(
        roc.tpr, roc.fpr, half, half, delta=privacy.delta, confidence=confidence
    )
    return AuditReport(
        claimed_epsilon=privacy.epsilon,
        empirical_lower=bound.lower,
        empirical_point=bound.point,
        delta=privacy.delta,
        confidence=confidence,
        n_canaries=n_canaries,
        auc=roc.auc,
        tpr=bound.tpr,
        fpr=bound.fpr,
        privacy=privacy,
    )
