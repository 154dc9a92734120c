"""The contract every poisoning generator follows, and the trigger value object.

A subclass writes only the algorithm, in :meth:`PoisonAttack._poison`. The public
:meth:`PoisonAttack.poison` is final: it validates the inputs, seeds a generator, runs the
algorithm on copies, clips the poisoned inputs to the bounds and checks what came back, so every
generator returns the poisoned data together with its ground-truth mask.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, final

import torch

from bastion.errors import ConfigurationError, InputError
from bastion.models.base import check_bounds, check_labels

__all__ = ["PoisonAttack", "PoisonResult", "Trigger", "check_rate"]


@dataclass(frozen=True)
class Trigger:
    """A backdoor trigger: ``x' = x * (1 - alpha * mask) + alpha * mask * pattern``.

    ``pattern`` and ``mask`` have the shape of one input; ``mask`` is 1 where the trigger lives
    (a corner patch for BadNets, everywhere for a blended trigger) and ``alpha`` the opacity.

    Example
    -------
    >>> import torch
    >>> m = torch.tensor([[[0.0, 0.0], [0.0, 1.0]]])
    >>> t = Trigger(kind="patch", pattern=torch.ones(1, 2, 2), mask=m)
    >>> t.apply(torch.zeros(1, 1, 2, 2)).flatten().tolist()
    [0.0, 0.0, 0.0, 1.0]
    """

    kind: str
    pattern: torch.Tensor
    mask: torch.Tensor
    alpha: float = 1.0

    def __post_init__(self) -> None:
        if self.pattern.shape != self.mask.shape:
            raise ConfigurationError(
                f"trigger pattern {tuple(self.pattern.shape)} and mask "
                f"{tuple(self.mask.shape)} must have the same shape"
            )
        if not (math.isfinite(self.alpha) and 0.0 < self.alpha <= 1.0):
            raise ConfigurationError(f"trigger alpha must be in (0, 1], got {self.alpha!r}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.pattern.shape)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Stamp the trigger on a batch ``(n, *input_shape)``; returns a new tensor."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise InputError(
                f"the trigger is for inputs of shape {self.input_shape}; got a batch of "
                f"{tuple(x.shape)}"
            )
        w = (self.alpha * self.mask).to(device=x.device, dtype=x.dtype)
        return x * (1 - w) + w * self.pattern.to(device=x.device, dtype=x.dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply(x)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "alpha": self.alpha,
            "shape": list(self.input_shape),
            "pattern": self.pattern.flatten().tolist(),
            "mask": self.mask.flatten().tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trigger:
        shape = tuple(data["shape"])
        return cls(
            kind=data["kind"],
            pattern=torch.tensor(data["pattern"], dtype=torch.float32).reshape(shape),
            mask=torch.tensor(data["mask"], dtype=torch.float32).reshape(shape),
            alpha=float(data["alpha"]),
        )


@dataclass(frozen=True)
class PoisonResult:
    """Poisoned data ``(x, y)``, the ground-truth ``mask`` of poisoned rows, and how.

    ``y_original`` holds the labels before poisoning (equal to ``y`` for clean-label attacks).
    ``target_class`` and ``trigger`` are set for backdoors (``trigger`` is ``None`` for label
    flipping, whose ``target_class`` is ``None`` unless every flip goes to one class).
    """

    attack: str
    params: dict[str, Any]
    x: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor
    y_original: torch.Tensor
    target_class: int | None = None
    trigger: Trigger | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    @property
    def n_poisoned(self) -> int:
        return int(self.mask.sum())

    @property
    def rate(self) -> float:
        return self.n_poisoned / self.n if self.n else 0.0

    @property
    def indices(self) -> torch.Tensor:
        """Row indices of the poisoned samples."""
        return torch.nonzero(self.mask).flatten()

    def summary(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            "params": self.params,
            "n": self.n,
            "n_poisoned": self.n_poisoned,
            "rate": self.rate,
            "target_class": self.target_class,
            "trigger": None if self.trigger is None else self.trigger.kind,
            "seconds": self.seconds,
        }


def check_rate(rate: object, name: str = "rate") -> float:
    """Return ``rate`` as a float in (0, 1], or raise :class:`ConfigurationError`."""
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise ConfigurationError(f"{name} must be a number in (0, 1], got {rate!r}")
    value = float(rate)
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ConfigurationError(f"{name} must be in (0, 1], got {rate!r}")
    return value


def check_class(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigurationError(f"{name} must be a class index >= 0, got {value!r}")
    return int(value)


class PoisonAttack(ABC):
    """Base class of poisoning generators (see the module docstring).

    ``rate`` is the fraction of the *whole* data set that is poisoned; a generator raises
    :class:`InputError` when too few samples are eligible (e.g. too few target-class samples for
    a clean-label attack).
    """

    name: ClassVar[str] = "poison"

    def __init__(
        self, *, rate: float, bounds: tuple[float, float] = (0.0, 1.0), seed: int = 0
    ) -> None:
        self.rate = check_rate(rate)
        lo, hi = (float(b) for b in bounds)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ConfigurationError(f"bounds must be finite with low < high, got {bounds!r}")
        self.bounds = (lo, hi)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigurationError(f"seed must be an int, got {seed!r}")
        self.seed = seed

    @final
    def poison(
        self, x: torch.Tensor, y: torch.Tensor, *, num_classes: int | None = None
    ) -> PoisonResult:
        """Poison a copy of ``(x, y)``: inputs ``(n, ...)`` in ``bounds``, labels ``(n,)``."""
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise InputError("x and y must be torch tensors")
        if x.dim() < 2 or x.shape[0] == 0:
            raise InputError(f"x must be a non-empty batch (n, ...), got {tuple(x.shape)}")
        x = x.detach().float()
        check_bounds(x, self.bounds)
        k = int(y.max()) + 1 if num_classes is None and y.numel() else num_classes or 0
        if k < 2:
            raise InputError("the labels hold fewer than two classes; pass num_classes=")
        check_labels(y, k, x.shape[0])
        y = y.detach().long().cpu()
        x = x.cpu()
        self._check_classes(k)
        generator = torch.Generator().manual_seed(self.seed)
        start = time.perf_counter()
        x_p, y_p, mask = self._poison(x.clone(), y.clone(), k, generator)
        if x_p.shape != x.shape or y_p.shape != y.shape or mask.shape != y.shape:
            raise RuntimeError(f"{type(self).__name__}._poison returned mismatched shapes")
        x_p = x_p.clamp(*self.bounds)
        return PoisonResult(
            attack=self.name,
            params=self.get_params(),
            x=x_p,
            y=y_p,
            mask=mask.bool(),
            y_original=y,
            target_class=self._target(),
            trigger=self._trigger_for(tuple(x.shape[1:])),
            seconds=time.perf_counter() - start,
            extra=self._extra(),
        )

    def n_poison(self, n: int) -> int:
        """How many of ``n`` samples to poison at this rate (at least one)."""
        return max(1, round(self.rate * n))

    @staticmethod
    def choose(
        eligible: torch.Tensor, count: int, generator: torch.Generator, what: str
    ) -> torch.Tensor:
        """``count`` distinct indices drawn uniformly from the boolean ``eligible`` mask."""
        idx = torch.nonzero(eligible).flatten()
        if idx.numel() < count:
            raise InputError(
                f"{count} samples must be poisoned but only {idx.numel()} are {what}; "
                "lower the rate or give more data"
            )
        return idx[torch.randperm(idx.numel(), generator=generator)[:count]]

    # -- for subclasses ---------------------------------------------------------------------
    @abstractmethod
    def _poison(
        self, x: torch.Tensor, y: torch.Tensor, num_classes: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return poisoned ``(x, y, mask)``; ``x`` and ``y`` are copies the method may edit."""

    def _check_classes(self, num_classes: int) -> None:
        """Raise :class:`InputError` when a configured class is not in ``[0, num_classes)``."""
        return None

    def _target(self) -> int | None:
        return None

    def _trigger_for(self, input_shape: tuple[int, ...]) -> Trigger | None:
        return None

    def _extra(self) -> dict[str, Any]:
        return {}

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters as JSON-ready values."""
        out: dict[str, Any] = {}
        for key, value in vars(self).items():
            if key.startswith("_") or key.endswith("_"):
                continue
            if isinstance(value, torch.Tensor):
                value = value.tolist()
            elif isinstance(value, dict):
                value = {str(k): v for k, v in value.items()}
            elif isinstance(value, tuple):
                value = list(value)
            out[key] = value
        return out

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in sorted(self.get_params().items()))
        return f"{type(self).__name__}({params})"
