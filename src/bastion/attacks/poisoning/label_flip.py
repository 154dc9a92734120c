"""Label flipping: random, or along chosen (source → target) class pairs.

Biggio, Nelson & Laskov, "Support Vector Machines Under Adversarial Label Noise", ACML 2011
(https://proceedings.mlr.press/v20/biggio11.html) study label flips as the simplest poisoning;
here the flips are random (each chosen sample gets a uniformly drawn *different* label) or
targeted (a sample of a source class gets the paired target class). Inputs are untouched.

Example
-------
>>> import torch
>>> from bastion.attacks.poisoning import LabelFlip
>>> x, y = torch.rand(100, 4), torch.arange(100) % 5
>>> res = LabelFlip(rate=0.1, seed=0).poison(x, y)
>>> res.n_poisoned, bool((res.y[res.mask] != y[res.mask]).all())
(10, True)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from bastion.attacks.poisoning.base import PoisonAttack, check_class
from bastion.errors import ConfigurationError, InputError

__all__ = ["LabelFlip"]


class LabelFlip(PoisonAttack):
    """Flip the labels of ``rate`` of the samples.

    Parameters
    ----------
    rate: fraction of the whole data set whose label is flipped.
    pairs: ``{source: target}``; when given only samples of a source class are flipped, to
        their target. Default: random flips to any other class.
    seed: seeds the choice of samples and of the new labels.
    """

    name = "label_flip"

    def __init__(
        self,
        *,
        rate: float,
        pairs: Mapping[int, int] | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        seed: int = 0,
    ) -> None:
        super().__init__(rate=rate, bounds=bounds, seed=seed)
        if pairs is not None:
            if not isinstance(pairs, Mapping) or not pairs:
                raise ConfigurationError("pairs must be a non-empty {source: target} mapping")
            clean: dict[int, int] = {}
            for s, t in pairs.items():
                s_, t_ = check_class(s, "pairs source"), check_class(t, "pairs target")
                if s_ == t_:
                    raise ConfigurationError(f"pair {s_} → {t_} flips a class to itself")
                clean[s_] = t_
            pairs = clean
        self.pairs = pairs

    def _check_classes(self, num_classes: int) -> None:
        for s, t in (self.pairs or {}).items():
            if max(s, t) >= num_classes:
                raise InputError(f"pair {s} → {t} names a class outside [0, {num_classes - 1}]")

    def _target(self) -> int | None:
        if self.pairs and len(set(self.pairs.values())) == 1:
            return next(iter(self.pairs.values()))
        return None

    def _poison(
        self, x: torch.Tensor, y: torch.Tensor, num_classes: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = y.shape[0]
        count = self.n_poison(n)
        mask = torch.zeros(n, dtype=torch.bool)
        if self.pairs is None:
            idx = self.choose(torch.ones(n, dtype=torch.bool), count, generator, "available")
            shift = torch.randint(1, num_classes, (idx.numel(),), generator=generator)
            y[idx] = (y[idx] + shift) % num_classes
        else:
            sources = torch.tensor(list(self.pairs), dtype=torch.long)
            targets = torch.tensor(list(self.pairs.values()), dtype=torch.long)
            eligible = torch.isin(y, sources)
            idx = self.choose(eligible, count, generator, "in a source class")
            lookup = torch.arange(num_classes)
            lookup[sources] = targets
            y[idx] = lookup[y[idx]]
        mask[idx] = True
        return x, y, mask
