"""Gaussian-augmentation training: the base-classifier training of randomized smoothing.

Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized Smoothing",
ICML 2019, section 3.3. https://arxiv.org/abs/1902.02918

A smoothed classifier is only as good as its base classifier is on noisy inputs, so the base
classifier is trained on ``x + δ``, ``δ ~ N(0, σ² I)``, with a fresh draw for every example at
every step, using the same σ as the smoothing that will certify it. Adam and cross-entropy;
the noise is not clipped to the input bounds (as at certification time).

Shapes: ``x`` is ``(n, ...)`` as the module expects, ``y`` is ``(n,)`` integer labels.

Example
-------
>>> import torch
>>> from torch import nn
>>> x = torch.rand(256, 4, generator=torch.Generator().manual_seed(0))
>>> y = (x[:, 0] > 0.5).long()
>>> net = nn.Linear(4, 2)
>>> report = train_gaussian_augmentation(net, x, y, sigma=0.25, epochs=3, batch_size=64)
>>> report.steps, len(report.losses), net.training
(12, 3, False)
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from bastion.errors import ConfigurationError, InputError, ModelError

__all__ = ["GaussianAugmentationReport", "train_gaussian_augmentation"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GaussianAugmentationReport:
    """What one Gaussian-augmentation run did: its noise level, steps and per-epoch mean loss."""

    sigma: float
    epochs: int
    steps: int
    batch_size: int
    lr: float
    losses: tuple[float, ...]
    seconds: float

    @property
    def final_loss(self) -> float:
        return self.losses[-1]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["losses"] = list(self.losses)
        return d


def train_gaussian_augmentation(
    module: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    sigma: float,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = False,
) -> GaussianAugmentationReport:
    """Train ``module`` in place on Gaussian-noised copies of ``(x, y)``; it ends in eval mode.

    Deterministic under ``seed`` (batch order, noise and dropout all come from it). The noise
    is drawn on the module's device.
    """
    if isinstance(sigma, bool) or not isinstance(sigma, int | float):
        raise ConfigurationError(f"sigma must be a number >= 0, got {sigma!r}")
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ConfigurationError(f"sigma must be a finite number >= 0, got {sigma!r}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ConfigurationError(f"lr must be a positive number, got {lr!r}")
    if not (isinstance(weight_decay, int | float) and weight_decay >= 0):
        raise ConfigurationError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if not isinstance(module, nn.Module):
        raise ConfigurationError(f"module must be a torch nn.Module, got {type(module).__name__}")
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise InputError("x and y must be torch tensors")
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise InputError(
            f"x and y must be non-empty and of equal length, got {len(x)} and {len(y)}"
        )
    if not torch.is_floating_point(x):
        raise InputError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if y.dim() != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise InputError(f"y must be 1-d integer labels, got {y.dtype} {tuple(y.shape)}")
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ModelError("the module has no trainable parameters")
    device = params[0].device
    order_gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator(device=device).manual_seed(seed + 1)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    n = x.shape[0]
    batches = math.ceil(n / batch_size)
    losses: list[float] = []
    start = time.perf_counter()
    bar = Progress(
        TextColumn("[bold]gaussian augmentation"),
        BarColumn(),
        TextColumn("epoch {task.completed}/{task.total}"),
        TimeElapsedColumn(),
        transient=True,
        disable=not progress,
    )
    module.train()
    try:
        with bar:
            task = bar.add_task("epochs", total=epochs)
            for epoch in range(epochs):
                order = torch.randperm(n, generator=order_gen)
                total = 0.0
                for i in range(0, n, batch_size):
                    idx = order[i : i + batch_size]
                    xb, yb = x[idx].to(device), y[idx].to(device).long()
                    noise = torch.randn(
                        xb.shape, generator=noise_gen, device=device, dtype=xb.dtype
                    )
                    opt.zero_grad(set_to_none=True)
                    loss = F.cross_entropy(module(xb + sigma * noise), yb)
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(idx)
                losses.append(total / n)
                log.info(
                    "gaussian augmentation epoch %d/%d loss %.4f", epoch + 1, epochs, losses[-1]
                )
                bar.advance(task)
    finally:
        module.eval()
    return GaussianAugmentationReport(
        sigma=float(sigma),
        epochs=epochs,
        steps=epochs * batches,
        batch_size=batch_size,
        lr=float(lr),
        losses=tuple(losses),
        seconds=time.perf_counter() - start,
    )
