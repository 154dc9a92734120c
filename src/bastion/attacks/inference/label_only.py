"""Label-only membership attack (Choquette-Choo et al. 2021).

Paper: C. A. Choquette-Choo, F. Tramèr, N. Carlini, N. Papernot, "Label-Only Membership
Inference Attacks", ICML 2021. https://arxiv.org/abs/2007.14321

A model is more robust on the points it trained on: their predicted label survives small
perturbations more often. The attack queries only labels, for the sample itself, for its
one-pixel translations (images ``(C, H, W)`` when ``shifts=True``) and for ``n_noise`` copies
with Gaussian noise of standard deviation ``noise_std`` (as a fraction of the input range),
clipped to the bounds. The score is the fraction of those queries labelled ``y``: the
"gap attack" (is the sample classified correctly) refined by augmentation robustness.

Queries: ``n * (1 + 4·shifts + n_noise)``. Works on label-only models.

Example
-------
>>> import torch
>>> from torch import nn
>>> from bastion.models import TorchClassifier
>>> from bastion.attacks.inference import LabelOnlyAttack
>>> clf = TorchClassifier(nn.Linear(4, 3), input_shape=(4,), num_classes=3)
>>> attack = LabelOnlyAttack(n_noise=9)
>>> attack.planned_queries(clf, 10)
100
"""

from __future__ import annotations

from typing import ClassVar

import torch

from bastion.attacks.inference._common import query_labels
from bastion.attacks.inference.base import MembershipAttack, check_positive
from bastion.errors import ConfigurationError
from bastion.models.base import Capability, Classifier

__all__ = ["LabelOnlyAttack"]


class LabelOnlyAttack(MembershipAttack):
    """Choquette-Choo et al.'s augmentation/noise-robustness attack (see the module docstring).

    Parameters
    ----------
    n_noise:
        Noisy copies per sample (0 for shifts and the gap attack only).
    noise_std:
        Noise standard deviation as a fraction of ``bounds[1] - bounds[0]``.
    shifts:
        Add the four one-pixel translations for image inputs ``(C, H, W)``.
    batch_size, seed:
        Query batch size (in augmented rows); seed of the noise.
    """

    name: ClassVar[str] = "label-only"
    requires: ClassVar[Capability] = Capability.LABELS

    def __init__(
        self,
        *,
        n_noise: int = 20,
        noise_std: float = 0.1,
        shifts: bool = True,
        batch_size: int = 512,
        seed: int | None = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        if isinstance(n_noise, bool) or not isinstance(n_noise, int) or n_noise < 0:
            raise ConfigurationError(f"n_noise must be an integer >= 0, got {n_noise!r}")
        check_positive(noise_std, "noise_std")
        self.n_noise = n_noise
        self.noise_std = float(noise_std)
        self.shifts = bool(shifts)

    def _copies(self, image: bool) -> int:
        return 1 + (4 if self.shifts and image else 0) + self.n_noise

    def planned_queries(self, classifier: Classifier, n: int) -> int:
        return n * self._copies(len(classifier.input_shape) == 3)

    def _augment(
        self, x: torch.Tensor, bounds: tuple[float, float], generator: torch.Generator
    ) -> torch.Tensor:
        """``(copies, b, *shape)`` queries for a batch ``x`` of shape ``(b, *shape)``."""
        out = [x]
        if self.shifts and x.dim() == 4:
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                shifted = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
                # fill the wrapped-around row/column with the image border instead
                if dy:
                    row = 0 if dy > 0 else -1
                    shifted[:, :, row] = x[:, :, row]
                if dx:
                    col = 0 if dx > 0 else -1
                    shifted[:, :, :, col] = x[:, :, :, col]
                out.append(shifted)
        if self.n_noise:
            lo, hi = bounds
            noise = torch.randn((self.n_noise, *x.shape), generator=generator)
            noisy = (x.unsqueeze(0) + noise * self.noise_std * (hi - lo)).clamp(lo, hi)
            out.extend(noisy.unbind(0))
        return torch.stack(out)

    def _score(
        self,
        classifier: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        copies = self._copies(x.dim() == 4)
        per_batch = max(1, self.batch_size // copies)
        scores = []
        for i in range(0, x.shape[0], per_batch):
            xb, yb = x[i : i + per_batch], y[i : i + per_batch]
            aug = self._augment(xb, classifier.bounds, generator)
            labels = query_labels(classifier, aug.flatten(0, 1), self.batch_size)
            correct = labels.view(copies, -1) == yb[None, :]
            scores.append(correct.double().mean(0))
        return torch.cat(scores)
