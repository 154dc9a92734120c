"""Shared pieces of the inference attacks: per-sample signals, batched queries, reference models.

Reference (shadow) models are the attacker's own: they are trained by a ``train_fn(x, y, seed)
-> nn.Module`` and queried freely; only the target classifier is metered. A ``train_fn`` that
also has a ``train_many(x, y, subsets, seeds)`` method (as :class:`DefaultTrainer` has) trains
each block of reference models in one batched loop (:mod:`._ensemble`); the blocks are units of
work that an executor may spread over processes or a Ray cluster (:func:`train_references`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bastion.errors import ConfigurationError, InputError
from bastion.models.base import Classifier, check_bounds, check_labels

__all__ = [
    "REFERENCE_BLOCK",
    "DefaultTrainer",
    "TrainFn",
    "check_population",
    "log_probs",
    "module_logits",
    "own_log_prob",
    "query_labels",
    "query_logits",
    "scaled_logit",
    "train_references",
]

#: ``DefaultTrainer(batched="auto")`` batches models up to this many parameters (measured
#: crossover on one CPU thread: about 50k parameters for a 256-unit MLP)
_BATCH_MAX_PARAMS = 60_000

#: ``train_fn(x, y, seed) -> nn.Module``: trains a fresh reference model on ``(x, y)``
TrainFn = Callable[[torch.Tensor, torch.Tensor, int], nn.Module]


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax in float64 (also right for score-only adapters, whose logits are log-probs)."""
    return torch.log_softmax(logits.double(), dim=1)


def _rest_minus_own(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_j - z_y`` for ``j != y``, sorted per row, shape ``(n, k - 1)``, float64.

    Sorting makes the reductions below depend only on the multiset of logit gaps, not on the
    position of the true class: two rows with the same gaps get bit-identical signals, so ties
    stay ties (unsorted sums break them by rounding noise, in a class-dependent way).
    """
    z = logits.double()
    d = (z - z.gather(1, y[:, None])).scatter(1, y[:, None], -math.inf)
    return d.sort(dim=1, descending=True).values[:, :-1]


def own_log_prob(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``log p_y`` per sample (``-CE``), computed from the sorted logit gaps (see above)."""
    d = _rest_minus_own(logits, y)
    return -torch.logsumexp(torch.cat([torch.zeros_like(d[:, :1]), d], dim=1), dim=1)


def scaled_logit(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LiRA's per-sample signal ``log p_y - log(1 - p_y) = -log sum_{j != y} e^(z_j - z_y)``."""
    return -torch.logsumexp(_rest_minus_own(logits, y), dim=1)


@torch.no_grad()
def query_logits(classifier: Classifier, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The target's logits for ``x``, batch by batch (each row counts as one query)."""
    dev = classifier.device
    return torch.cat(
        [
            classifier.logits(x[i : i + batch_size].to(dev)).detach().cpu()
            for i in range(0, len(x), batch_size)
        ]
    )


@torch.no_grad()
def query_labels(classifier: Classifier, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The target's predicted labels for ``x``, batch by batch."""
    dev = classifier.device
    return torch.cat(
        [
            classifier.predict(x[i : i + batch_size].to(dev)).cpu()
            for i in range(0, len(x), batch_size)
        ]
    )


@torch.no_grad()
def module_logits(module: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits of one of the attacker's own reference models (eval mode, not metered)."""
    module.eval()
    dev = next(iter(module.parameters()), torch.empty(0)).device
    return torch.cat(
        [module(x[i : i + batch_size].to(dev)).detach().cpu() for i in range(0, len(x), batch_size)]
    )


@dataclass(frozen=True)
class DefaultTrainer:
    """The default ``train_fn``: a fresh ``small_mlp`` (flat inputs) or ``small_cnn`` (images)
    trained with :func:`bastion.models.zoo.train_classifier`.

    Match the target's training recipe for the strongest attack; pass your own ``train_fn``
    when the target is not a small network.

    :meth:`train_many` trains several models either at once
    (:func:`~bastion.attacks.inference._ensemble.train_ensemble`: the same initialisations,
    batches and Adam updates as one-by-one calls, equal up to floating-point rounding) or one by
    one. ``batched="auto"`` (default) batches models of at most 60,000 parameters: on one CPU
    thread, 8 models batched took 0.78x the one-by-one time for the 19k-parameter digits MLP
    and 0.91x for the digits CNN, but 1.33x for the 203k-parameter MNIST MLP, whose steps are
    bound by arithmetic and memory traffic rather than per-step overhead. ``True``/``False``
    force either way.
    """

    input_shape: tuple[int, ...]
    num_classes: int
    arch: str = "auto"
    hidden: int = 64
    epochs: int = 30
    lr: float = 3e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    batched: bool | str = "auto"

    def __post_init__(self) -> None:
        if self.arch not in ("auto", "mlp", "cnn"):
            raise ConfigurationError(f"arch must be auto, mlp or cnn, got {self.arch!r}")
        if self.arch == "cnn" and len(self.input_shape) != 3:
            raise ConfigurationError(f"arch='cnn' needs (C, H, W) inputs, got {self.input_shape}")
        for name in ("hidden", "epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigurationError(f"{name} must be a positive integer")
        if self.batched not in (True, False, "auto"):
            raise ConfigurationError(f"batched must be True, False or 'auto', got {self.batched!r}")
        if not (self.lr > 0 and self.weight_decay >= 0):
            raise ConfigurationError("lr must be positive and weight_decay non-negative")

    def _make(self) -> nn.Module:
        from bastion.models.zoo import small_cnn, small_mlp

        use_cnn = self.arch == "cnn" or (
            self.arch == "auto" and len(self.input_shape) == 3 and min(self.input_shape[1:]) >= 8
        )
        if use_cnn:
            c, h, w = self.input_shape
            return small_cnn((c, h, w), self.num_classes, width=8)
        return small_mlp(math.prod(self.input_shape), self.num_classes, hidden=self.hidden)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
        from bastion.models.zoo import train_classifier

        torch.manual_seed(seed)
        return train_classifier(
            self._make(),
            x,
            y,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            seed=seed,
        )

    def train_many(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        subsets: Sequence[torch.Tensor],
        seeds: Sequence[int],
    ) -> list[nn.Module]:
        """Model k trained on ``x[subsets[k]]`` under ``seeds[k]``, as one call would."""
        batched = self.batched
        if batched == "auto":
            with torch.random.fork_rng(devices=[]):  # the probe leaves the global RNG alone
                size = sum(p.numel() for p in self._make().parameters())
            batched = size <= _BATCH_MAX_PARAMS
        if not batched:
            return [self(x[s], y[s], int(seed)) for s, seed in zip(subsets, seeds, strict=True)]
        from bastion.attacks.inference._ensemble import train_ensemble

        return train_ensemble(
            self._make,
            x,
            y,
            subsets,
            seeds,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
        )


#: Reference models trained together in one unit of work by a trainer with ``train_many``
#: (one batched loop per block). The blocks depend only on the models' indices, so any executor
#: trains the same blocks and the same models; 4 models batched train at about the speed of 8
#: (digits MLP, one thread) while 64 models still make 16 units to spread over workers.
REFERENCE_BLOCK = 4


def train_references(
    train_fn: TrainFn,
    x: torch.Tensor,
    y: torch.Tensor,
    subsets: Sequence[torch.Tensor],
    seeds: Sequence[int],
    *,
    executor: Any = None,
) -> list[nn.Module]:
    """Reference model k trained on ``x[subsets[k]]`` under ``seeds[k]``.

    Each block of :data:`REFERENCE_BLOCK` consecutive models (one model when the trainer has
    no ``train_many``) is one unit of work for ``executor`` (an
    :class:`~bastion.audit.executor.Executor`, default in-process), trained in one batched
    ``train_fn.train_many`` call when the trainer has one. ``x`` and ``y`` travel once to each
    worker; a unit carries only its index subsets and seeds, so the models are the same on
    any executor (a trainer that cannot be pickled trains here).
    """
    from bastion.audit.units import map_units

    if len(subsets) != len(seeds):
        raise ConfigurationError(f"{len(subsets)} subsets but {len(seeds)} seeds")
    block = REFERENCE_BLOCK if callable(getattr(train_fn, "train_many", None)) else 1
    units = [
        (list(subsets[i : i + block]), [int(s) for s in seeds[i : i + block]])
        for i in range(0, len(seeds), block)
    ]
    parts = map_units(executor, _train_unit, units, (train_fn, x, y))
    return [model for part in parts for model in part]


def _train_unit(
    shared: tuple[TrainFn, torch.Tensor, torch.Tensor],
    unit: tuple[list[torch.Tensor], list[int]],
) -> list[nn.Module]:
    """One unit of :func:`train_references`: a block of models, batched when possible."""
    train_fn, x, y = shared
    subsets, seeds = unit
    many = getattr(train_fn, "train_many", None)
    if callable(many):
        models = many(x, y, subsets, seeds)
        if len(models) != len(subsets):
            raise ConfigurationError(
                f"train_fn.train_many returned {len(models)} models for {len(subsets)} subsets"
            )
        return list(models)
    return [train_fn(x[s], y[s], seed) for s, seed in zip(subsets, seeds, strict=True)]


def check_population(
    classifier: Classifier, x: torch.Tensor, y: torch.Tensor, *, minimum: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate the attacker's population data against the target's shape, bounds and classes."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise InputError("population x and y must be torch tensors")
    if tuple(x.shape[1:]) != tuple(classifier.input_shape):
        raise InputError(
            f"population x has shape {tuple(x.shape)}; the model expects "
            f"(n, {', '.join(map(str, classifier.input_shape))})"
        )
    if x.shape[0] < minimum:
        raise InputError(f"population data needs at least {minimum} samples, got {x.shape[0]}")
    x = x.detach().float()
    check_bounds(x, classifier.bounds, name="population x")
    check_labels(y, classifier.num_classes, x.shape[0], name="population y")
    return x, y.long()
