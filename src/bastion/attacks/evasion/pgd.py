"""Projected Gradient Descent.

Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models Resistant to
Adversarial Attacks", ICLR 2018. https://arxiv.org/abs/1706.06083

Iterated gradient steps of size ``step_size`` (sign of the gradient for L∞, the normalised
gradient for L2), each followed by projection onto the ``eps``-ball and the input bounds.
Optional uniform random start inside the ball and ``restarts``: each sample keeps the first
restart that fools the model (else the last).

Defaults: ``steps=40``, ``step_size=eps/4``, ``random_start=True``.

Example
-------
>>> import torch
>>> from torch import nn
>>> from bastion.models import TorchClassifier
>>> from bastion.attacks.evasion import PGD
>>> _ = torch.manual_seed(0)
>>> clf = TorchClassifier(nn.Linear(4, 3), input_shape=(4,), num_classes=3)
>>> x = torch.rand(8, 4)
>>> res = PGD(norm="linf", eps=0.3, steps=10, step_size=0.05).generate(clf, x)
>>> bool(((res.x_adv - x).abs() <= 0.3 + 1e-6).all())
True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bastion.attacks.evasion._common import normalize, project, random_in_ball
from bastion.attacks.evasion.base import EvasionAttack, check_positive
from bastion.models.base import Classifier
from bastion.threat import Norm

__all__ = ["PGD"]


class PGD(EvasionAttack):
    """Projected Gradient Descent with cross-entropy loss, L∞ or L2.

    Parameters
    ----------
    norm: "linf" or "l2".
    eps: radius of the perturbation ball.
    steps: gradient steps per restart.
    step_size: size of each step (default ``eps / 4``).
    random_start: start from a uniform point in the ball instead of ``x``.
    restarts: number of runs; per sample the first successful one is kept.
    targeted: descend the loss of ``target`` instead of ascending that of ``y``.
    """

    name = "pgd"

    def __init__(
        self,
        *,
        norm: str | Norm = "linf",
        eps: float,
        steps: int = 40,
        step_size: float | None = None,
        random_start: bool = True,
        restarts: int = 1,
        targeted: bool = False,
        batch_size: int = 256,
        seed: int | None = 0,
    ) -> None:
        super().__init__(norm=norm, eps=eps, targeted=targeted, batch_size=batch_size, seed=seed)
        check_positive(steps, "steps", integer=True)
        check_positive(restarts, "restarts", integer=True)
        if step_size is None:
            step_size = float(eps) / 4 if eps else 0.0
        elif eps:
            check_positive(step_size, "step_size")
        self.steps = int(steps)
        self.step_size = float(step_size)
        self.random_start = bool(random_start)
        self.restarts = int(restarts)

    def _run(
        self,
        classifier: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        eps = float(self.eps or 0.0)
        lo, hi = classifier.bounds
        best = x.clone()
        done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        labels = y if target is None else target
        sign = 1.0 if target is None else -1.0
        for _ in range(self.restarts):
            if self.random_start and eps > 0:
                x_adv = (x + random_in_ball(x, self.norm, eps, generator)).clamp(lo, hi)
            else:
                x_adv = x.clone()
            for _ in range(self.steps):
                with torch.enable_grad():
                    x_adv.requires_grad_(True)
                    loss = F.cross_entropy(classifier.logits(x_adv), labels, reduction="sum")
                    (grad,) = torch.autograd.grad(loss, x_adv)
                with torch.no_grad():
                    x_adv = x_adv.detach() + (sign * self.step_size) * normalize(grad, self.norm)
                    x_adv = (x + project(x_adv - x, self.norm, eps)).clamp_(lo, hi)
            if self.restarts == 1:
                return x_adv
            with torch.no_grad():
                pred = classifier.logits(x_adv).argmax(1)
            fooled = pred != y if target is None else pred == target
            best[~done] = x_adv[~done]
            done |= fooled
            if bool(done.all()):
                break
        return best
