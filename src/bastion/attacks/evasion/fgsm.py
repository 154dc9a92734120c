"""Fast Gradient Sign Method.

Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015.
https://arxiv.org/abs/1412.6572

One step of size ``eps`` along the sign of the loss gradient (L∞), or along the normalised
gradient (L2, the "fast gradient method"). Targeted: a step down the loss of the target class.

Shapes: ``x`` is ``(n, *input_shape)`` in the model's bounds, ``y`` is ``(n,)``.

Example
-------
>>> import torch
>>> from torch import nn
>>> from bastion.models import TorchClassifier
>>> from bastion.attacks.evasion import FGSM
>>> _ = torch.manual_seed(0)
>>> clf = TorchClassifier(nn.Linear(4, 3), input_shape=(4,), num_classes=3)
>>> x = torch.rand(8, 4)
>>> res = FGSM(eps=0.1).generate(clf, x)
>>> bool(((res.x_adv - x).abs() <= 0.1 + 1e-6).all())
True
"""

from __future__ import annotations

import torch

from bastion.attacks.evasion._common import ce_loss, input_gradient, normalize
from bastion.attacks.evasion.base import EvasionAttack
from bastion.models.base import Classifier
from bastion.threat import Norm

__all__ = ["FGSM"]


class FGSM(EvasionAttack):
    """Fast Gradient Sign Method (L∞) / Fast Gradient Method (L2).

    Parameters: ``norm`` ("linf" or "l2", default "linf"), ``eps`` (required), ``targeted``.
    """

    name = "fgsm"

    def __init__(
        self,
        *,
        norm: str | Norm = "linf",
        eps: float,
        targeted: bool = False,
        batch_size: int = 256,
        seed: int | None = 0,
    ) -> None:
        super().__init__(norm=norm, eps=eps, targeted=targeted, batch_size=batch_size, seed=seed)

    def _run(
        self,
        classifier: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        if target is not None:
            _, grad, _ = input_gradient(classifier, x, lambda z: -ce_loss(z, target))
        else:
            _, grad, _ = input_gradient(classifier, x, lambda z: ce_loss(z, y))
        eps = self.eps if self.eps is not None else 0.0
        return x + eps * normalize(grad, self.norm)
