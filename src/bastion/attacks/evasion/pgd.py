"""Projected Gradient Descent.

Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models Resistant to
Adversarial Attacks", ICLR 2018. https://arxiv.org/abs/1706.06083

Iterated gradient steps of size ``step_size`` (sign of the gradient for L∞, the normalised
gradient for L2), each followed by projection onto the ``eps``-ball and the input bounds.
Optional uniform random start inside the ball and ``restarts``: each sample keeps the first
restart that fools the model (else the last). By default a sample stops being stepped once it
is fooled (``early_stop``), reusing the logits of the gradient pass, so no query is added.

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

from bastion.attacks.evasion._common import ascent_step, random_in_ball
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
    restarts: number of runs; later runs attack only the samples not yet fooled.
    early_stop: stop stepping a sample as soon as it is fooled (its iterate is kept). Robust
        accuracy is unchanged or lower (a success is never undone by later steps) and the
        attack does far less work; set ``False`` for maximum-loss examples (adversarial
        training), which always takes ``steps`` steps.
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
        early_stop: bool = True,
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
        self.early_stop = bool(early_stop)

    def _run(
        self,
        classifier: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        eps = float(self.eps or 0.0)
        best = x.clone()
        # rows still to attack; a row leaves once fooled (early_stop) or after its last restart
        todo = torch.arange(x.shape[0], device=x.device)
        for _ in range(self.restarts):
            x_adv, fooled = self._descend(
                classifier, x[todo], y[todo], target, todo, eps, generator
            )
            best[todo] = x_adv
            todo = todo[~fooled]
            if todo.numel() == 0:
                break
        return best

    def _descend(
        self,
        classifier: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        rows: torch.Tensor,
        eps: float,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One run of ``steps`` projected steps; returns the iterates and which ones fool."""
        lo, hi = classifier.bounds
        goal = None if target is None else target[rows]
        labels = y if goal is None else goal
        sign = 1.0 if goal is None else -1.0
        if self.random_start and eps > 0:
            x_adv = (x + random_in_ball(x, self.norm, eps, generator)).clamp(lo, hi)
        else:
            x_adv = x.clone()
        rules = self._rules()
        if rules is not None:
            x_adv = rules(x_adv, x)
        active = torch.arange(x.shape[0], device=x.device)  # positions still being stepped
        for _ in range(self.steps):
            xa = x_adv if active.numel() == x.shape[0] else x_adv[active]
            x0 = x if active.numel() == x.shape[0] else x[active]
            # Tabular rules in the loop: the model sees (and a success keeps) the projection of
            # the iterate; the step itself moves the unrounded iterate (straight through).
            xe = xa if rules is None else rules(xa, x0)
            with torch.enable_grad():
                xe.requires_grad_(True)
                logits = classifier.logits(xe)
                loss = F.cross_entropy(logits, labels[active], reduction="sum")
                (grad,) = torch.autograd.grad(loss, xe)
            with torch.no_grad():
                xa, xe = xa.detach(), xe.detach()
                if self.early_stop:
                    pred = logits.detach().argmax(1)
                    hit = pred != y[active] if goal is None else pred == goal[active]
                    if bool(hit.any()):  # freeze rows already fooled: a success stays one
                        x_adv[active[hit]] = xe[hit]
                        keep = ~hit
                        active, xa, grad = active[keep], xa[keep], grad[keep]
                        if active.numel() == 0:
                            break
                        x0 = x0[keep]
                xa = ascent_step(
                    xa,
                    grad,
                    x0,
                    norm=self.norm,
                    eps=eps,
                    step_size=sign * self.step_size,
                    bounds=(lo, hi),
                )
                xa = self._constrain(xa, x0, relaxed=True)  # tabular rules: box + immutables
                if active.numel() == x.shape[0]:
                    x_adv = xa
                else:
                    x_adv[active] = xa
        if rules is not None and active.numel():
            with torch.no_grad():
                x_adv[active] = rules(x_adv[active], x[active])
        if self.restarts == 1:  # nobody needs to know which fooled: generate() measures that
            return x_adv, torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        with torch.no_grad():
            pred = classifier.logits(x_adv).argmax(1)
        fooled = pred != y if goal is None else pred == goal
        return x_adv, fooled
