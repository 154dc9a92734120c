"""Clean-label backdoor with adversarial perturbations.

Turner, Tsipras & Madry, "Label-Consistent Backdoor Attacks", 2019.
https://arxiv.org/abs/1912.02771

Poisoned samples keep their *correct* label, so a reviewer who checks labels sees nothing. The
attacker takes target-class samples, makes them hard to learn from their content by a PGD
perturbation (bounded by ``eps`` in ``norm``) on a surrogate classifier, and stamps the trigger;
a model trained on them learns to rely on the trigger for the target class.

Defaults: ``eps=0.3`` (L∞, on [0, 1] inputs), ``steps=20``, a 3×3 checkerboard patch.

Example
-------
>>> import torch
>>> from torch import nn
>>> from bastion.models import TorchClassifier
>>> from bastion.attacks.poisoning import CleanLabel
>>> _ = torch.manual_seed(0)
>>> clf = TorchClassifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 4)), input_shape=(1, 8, 8),
...                       num_classes=4)
>>> x, y = torch.rand(40, 1, 8, 8), torch.arange(40) % 4
>>> res = CleanLabel(surrogate=clf, target_class=1, rate=0.1, steps=5).poison(x, y)
>>> res.n_poisoned, bool((res.y == y).all()), set(y[res.mask].tolist())
(4, True, {1})
"""

from __future__ import annotations

from typing import Any

import torch

from bastion.attacks.evasion.base import check_positive
from bastion.attacks.evasion.pgd import PGD
from bastion.attacks.poisoning.backdoor import BadNets
from bastion.attacks.poisoning.base import PoisonAttack, Trigger, check_class
from bastion.errors import ConfigurationError, InputError
from bastion.models.base import Classifier
from bastion.threat import Norm, parse_norm

__all__ = ["CleanLabel"]


class CleanLabel(PoisonAttack):
    """Label-consistent backdoor (Turner et al. 2019).

    Parameters
    ----------
    surrogate: a white-box classifier used to craft the perturbations.
    target_class: class whose samples are perturbed and triggered (labels unchanged).
    rate: fraction of the whole data set poisoned (all from the target class).
    eps, norm, steps: the PGD budget and iterations.
    patch_size, location, pattern: the BadNets-style trigger stamped after perturbation.
    """

    name = "clean_label"

    def __init__(
        self,
        *,
        surrogate: Classifier,
        target_class: int,
        rate: float,
        eps: float = 0.3,
        norm: str | Norm = "linf",
        steps: int = 20,
        patch_size: int = 3,
        location: str = "bottom-right",
        pattern: str = "checkerboard",
        seed: int = 0,
    ) -> None:
        if not hasattr(surrogate, "logits") or not hasattr(surrogate, "bounds"):
            raise ConfigurationError(
                "surrogate must be a bastion Classifier (e.g. a TorchClassifier)"
            )
        super().__init__(rate=rate, bounds=surrogate.bounds, seed=seed)
        self.target_class = check_class(target_class, "target_class")
        check_positive(eps, "eps")
        check_positive(steps, "steps", integer=True)
        self.eps = float(eps)
        self.norm = parse_norm(norm).value
        self.steps = int(steps)
        self._surrogate = surrogate
        self._badnets = BadNets(
            target_class=self.target_class,
            rate=rate,
            patch_size=patch_size,
            location=location,
            pattern=pattern,
            bounds=self.bounds,
            seed=seed,
        )
        self.patch_size = patch_size
        self.location = location
        self.pattern = pattern
        self._fooled = 0.0

    def trigger(self, input_shape: tuple[int, ...]) -> Trigger:
        return self._badnets.trigger(input_shape)

    def apply_trigger(self, x: torch.Tensor) -> torch.Tensor:
        """Stamp the trigger on clean inputs (test time)."""
        return self._badnets.apply_trigger(x)

    def _check_classes(self, num_classes: int) -> None:
        if self.target_class >= num_classes or num_classes != self._surrogate.num_classes:
            raise InputError(
                f"target_class {self.target_class} and the surrogate's "
                f"{self._surrogate.num_classes} classes must fit the labels' {num_classes}"
            )

    def _target(self) -> int | None:
        return self.target_class

    def _trigger_for(self, input_shape: tuple[int, ...]) -> Trigger | None:
        return self.trigger(input_shape)

    def _extra(self) -> dict[str, Any]:
        return {"surrogate_fooled": self._fooled}

    def _poison(
        self, x: torch.Tensor, y: torch.Tensor, num_classes: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        eligible = y == self.target_class
        idx = self.choose(eligible, self.n_poison(y.shape[0]), generator, "of the target class")
        pgd = PGD(norm=self.norm, eps=self.eps, steps=self.steps, seed=self.seed)
        res = pgd.generate(self._surrogate, x[idx], y[idx])
        self._fooled = float(res.success.float().mean())
        x[idx] = self.trigger(tuple(x.shape[1:])).apply(res.x_adv.cpu())
        mask = torch.zeros(y.shape[0], dtype=torch.bool)
        mask[idx] = True
        return x, y, mask
