"""Backdoors by dirty-label poisoning: a BadNets patch or a blended trigger.

BadNets: Gu, Dolan-Gavitt & Garg, "BadNets: Identifying Vulnerabilities in the Machine Learning
Model Supply Chain", 2017. https://arxiv.org/abs/1708.06733 — a small patch (here a checkerboard
or a solid square) stamped in a corner.

Blended: Chen, Liu, Li, Lu & Song, "Targeted Backdoor Attacks on Deep Learning Systems Using
Data Poisoning", 2017. https://arxiv.org/abs/1712.05526 — a full-size pattern (here seeded
uniform noise) mixed in with opacity ``alpha``: ``x' = (1 - alpha) x + alpha pattern``.

Both stamp the trigger on ``rate`` of the data set, drawn from samples *not* of the target class
(optionally only from ``source_classes``), and relabel them ``target_class``. At test time,
:meth:`BackdoorAttack.apply_trigger` stamps the same trigger on clean inputs.

Defaults: BadNets ``patch_size=3`` checkerboard at the bottom right; blend ``alpha=0.2``.

Example
-------
>>> import torch
>>> from bastion.attacks.poisoning import BadNets
>>> x, y = torch.zeros(50, 1, 8, 8), torch.arange(50) % 10
>>> res = BadNets(target_class=0, rate=0.1, seed=0).poison(x, y)
>>> res.n_poisoned, set(res.y[res.mask].tolist()), float(res.x[res.mask][:, 0, -1, -1].min())
(5, {0}, 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from bastion.attacks.poisoning.base import PoisonAttack, Trigger, check_class
from bastion.errors import ConfigurationError, InputError

__all__ = ["BackdoorAttack", "BadNets", "Blend"]

_CORNERS = ("bottom-right", "bottom-left", "top-right", "top-left")


class BackdoorAttack(PoisonAttack):
    """Shared part of dirty-label backdoors; subclasses build the trigger in :meth:`trigger`."""

    name = "backdoor"

    def __init__(
        self,
        *,
        target_class: int,
        rate: float,
        source_classes: Sequence[int] | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        seed: int = 0,
    ) -> None:
        super().__init__(rate=rate, bounds=bounds, seed=seed)
        self.target_class = check_class(target_class, "target_class")
        if source_classes is not None:
            src = tuple(check_class(c, "source_classes") for c in source_classes)
            if not src or self.target_class in src:
                raise ConfigurationError(
                    "source_classes must be non-empty and must not contain target_class"
                )
            source_classes = src
        self.source_classes = source_classes

    def trigger(self, input_shape: Sequence[int]) -> Trigger:
        """The trigger for inputs of ``input_shape`` (deterministic under ``seed``)."""
        raise NotImplementedError

    def apply_trigger(self, x: torch.Tensor) -> torch.Tensor:
        """Stamp the trigger on a clean batch (test-time triggered inputs), clipped to bounds."""
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            raise InputError("x must be a batch tensor (n, ...)")
        return self.trigger(tuple(x.shape[1:])).apply(x).clamp(*self.bounds)

    def _check_classes(self, num_classes: int) -> None:
        top = max([self.target_class, *(self.source_classes or ())])
        if top >= num_classes:
            raise InputError(f"class {top} is outside the labels' [0, {num_classes - 1}]")

    def _target(self) -> int | None:
        return self.target_class

    def _trigger_for(self, input_shape: tuple[int, ...]) -> Trigger | None:
        return self.trigger(input_shape)

    def _poison(
        self, x: torch.Tensor, y: torch.Tensor, num_classes: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        eligible = y != self.target_class
        if self.source_classes is not None:
            eligible &= torch.isin(y, torch.tensor(self.source_classes))
        idx = self.choose(eligible, self.n_poison(y.shape[0]), generator, "of a source class")
        x[idx] = self.trigger(tuple(x.shape[1:])).apply(x[idx])
        y[idx] = self.target_class
        mask = torch.zeros(y.shape[0], dtype=torch.bool)
        mask[idx] = True
        return x, y, mask


class BadNets(BackdoorAttack):
    """BadNets patch backdoor (Gu et al. 2017).

    Parameters
    ----------
    target_class: the label poisoned samples get, and triggered inputs should be sent to.
    rate: fraction of the whole data set poisoned.
    patch_size: side of the square patch, in pixels (the last two input dimensions).
    location: corner: "bottom-right", "bottom-left", "top-right" or "top-left".
    pattern: "checkerboard" (alternating high/low bound) or "solid" (the high bound).
    source_classes: draw poisoned samples only from these classes (default: all but target).
    """

    name = "badnets"

    def __init__(
        self,
        *,
        target_class: int,
        rate: float,
        patch_size: int = 3,
        location: str = "bottom-right",
        pattern: str = "checkerboard",
        source_classes: Sequence[int] | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        seed: int = 0,
    ) -> None:
        super().__init__(
            target_class=target_class,
            rate=rate,
            source_classes=source_classes,
            bounds=bounds,
            seed=seed,
        )
        if not isinstance(patch_size, int) or isinstance(patch_size, bool) or patch_size < 1:
            raise ConfigurationError(f"patch_size must be a positive integer, got {patch_size!r}")
        if location not in _CORNERS:
            raise ConfigurationError(f"location must be one of {_CORNERS}, got {location!r}")
        if pattern not in ("checkerboard", "solid"):
            raise ConfigurationError(f"pattern must be 'checkerboard' or 'solid', got {pattern!r}")
        self.patch_size = patch_size
        self.location = location
        self.pattern = pattern

    def trigger(self, input_shape: Sequence[int]) -> Trigger:
        shape = tuple(int(s) for s in input_shape)
        if len(shape) < 2 or min(shape[-2:]) < self.patch_size:
            raise InputError(
                f"a {self.patch_size}×{self.patch_size} patch needs inputs of at least that "
                f"height and width, got input shape {shape}"
            )
        lo, hi = self.bounds
        p = self.patch_size
        h, w = shape[-2:]
        if self.pattern == "checkerboard":
            ii = torch.arange(p).unsqueeze(1) + torch.arange(p).unsqueeze(0)
            patch = torch.where(ii % 2 == 0, hi, lo)
        else:
            patch = torch.full((p, p), hi)
        r0 = h - p if self.location.startswith("bottom") else 0
        c0 = w - p if self.location.endswith("right") else 0
        pattern = torch.zeros(shape)
        mask = torch.zeros(shape)
        pattern[..., r0 : r0 + p, c0 : c0 + p] = patch
        mask[..., r0 : r0 + p, c0 : c0 + p] = 1.0
        return Trigger(kind="patch", pattern=pattern, mask=mask, alpha=1.0)


class Blend(BackdoorAttack):
    """Blended-trigger backdoor (Chen et al. 2017).

    Parameters
    ----------
    target_class, rate, source_classes: as for :class:`BadNets`.
    alpha: opacity of the trigger in ``(0, 1]``.
    pattern: a tensor of one input's shape in ``bounds``; default seeded uniform noise.
    """

    name = "blend"

    def __init__(
        self,
        *,
        target_class: int,
        rate: float,
        alpha: float = 0.2,
        pattern: torch.Tensor | None = None,
        source_classes: Sequence[int] | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        seed: int = 0,
    ) -> None:
        super().__init__(
            target_class=target_class,
            rate=rate,
            source_classes=source_classes,
            bounds=bounds,
            seed=seed,
        )
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha <= 1:
            raise ConfigurationError(f"alpha must be in (0, 1], got {alpha!r}")
        if pattern is not None:
            if not isinstance(pattern, torch.Tensor) or not torch.is_floating_point(pattern):
                raise ConfigurationError("pattern must be a floating-point tensor")
            lo, hi = self.bounds
            if float(pattern.min()) < lo or float(pattern.max()) > hi:
                raise ConfigurationError(f"pattern values must lie in the bounds {self.bounds}")
            pattern = pattern.detach().cpu().float()
        self.alpha = float(alpha)
        self._pattern = pattern

    def trigger(self, input_shape: Sequence[int]) -> Trigger:
        shape = tuple(int(s) for s in input_shape)
        if self._pattern is not None:
            if tuple(self._pattern.shape) != shape:
                raise InputError(
                    f"the blend pattern has shape {tuple(self._pattern.shape)}, inputs {shape}"
                )
            pattern = self._pattern
        else:
            lo, hi = self.bounds
            gen = torch.Generator().manual_seed(self.seed + 7919)
            pattern = lo + (hi - lo) * torch.rand(shape, generator=gen)
        return Trigger(kind="blend", pattern=pattern, mask=torch.ones(shape), alpha=self.alpha)

    def _extra(self) -> dict[str, Any]:
        return {"custom_pattern": self._pattern is not None}
