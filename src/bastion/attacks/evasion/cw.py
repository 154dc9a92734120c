"""Carlini–Wagner L2 attack.

Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017.
https://arxiv.org/abs/1608.04644

A minimum-norm L2 attack. The box constraint is removed by a change of variables: the
adversarial input is ``x_adv = mid + half * tanh(w)`` where ``mid`` and ``half`` are the centre
and half-width of the model's bounds, so any ``w`` gives an input inside the bounds. For each
sample the attack minimises

    ||x_adv - x||_2^2 + c * max(z_y - max_{j != y} z_j + confidence, 0)        (untargeted)
    ||x_adv - x||_2^2 + c * max(max_{j != t} z_j - z_t + confidence, 0)        (targeted)

over ``w`` with Adam (``steps`` iterations), and a
per-sample binary search over the constant ``c`` (``binary_search_steps`` rounds starting from
``c``): a round that succeeds halves the interval downwards, one that fails moves it upwards
(times ten while no success has been seen). Each sample keeps its smallest-L2 adversarial
example over all rounds and steps; a sample never fooled is returned unchanged. With
``abort_early`` a round stops when the total objective has not decreased by 0.01% over a tenth
of the steps.

``lr`` is the Adam learning rate for a unit-wide input range (e.g. ``[0, 1]``); it is divided
by ``hi - lo`` so that a step moves an input by the same amount whatever the bounds.

One forward and one backward pass per step, for the whole batch; no randomness.

Norm: L2 only. Defaults: ``confidence=0``, ``c=1e-2``, ``binary_search_steps=9``,
``steps=1000``, ``lr=1e-2``, ``abort_early=True``. ``eps`` is optional: when given, the
result is projected onto the L2 ball of that radius.

Shapes: ``x`` is ``(n, *input_shape)`` inside the model's bounds, ``y`` and ``target`` are
``(n,)``.

Example
-------
>>> import torch
>>> from torch import nn
>>> from bastion.models import TorchClassifier
>>> from bastion.attacks.evasion.cw import CarliniWagnerL2
>>> _ = torch.manual_seed(0)
>>> clf = TorchClassifier(nn.Linear(4, 3), input_shape=(4,), num_classes=3)
>>> x = torch.rand(8, 4) * 0.5 + 0.25
>>> res = CarliniWagnerL2(steps=100, binary_search_steps=5, c=1.0, lr=0.05).generate(clf, x)
>>> res.success_rate
1.0
>>> bool(((res.x_adv >= 0) & (res.x_adv <= 1)).all())
True
"""

from __future__ import annotations

import math

import torch

from bastion.attacks.evasion.base import EvasionAttack, check_positive
from bastion.errors import ConfigurationError
from bastion.models.base import Classifier
from bastion.threat import Norm

__all__ = ["CarliniWagnerL2"]

_UPPER_INIT = 1e10
_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8
# keeps atanh finite for inputs that sit exactly on a bound
_TANH_LIMIT = 1 - 1e-6


class CarliniWagnerL2(EvasionAttack):
    """Carlini–Wagner L2 minimum-norm attack (see the module docstring).

    Parameters
    ----------
    confidence: margin ``kappa`` by which the adversarial class must win (>= 0).
    c: initial trade-off constant between distance and misclassification (> 0).
    binary_search_steps: rounds of the per-sample binary search over ``c``.
    steps: Adam iterations per round.
    lr: Adam learning rate for a unit-wide input range (scaled by ``1 / (hi - lo)``).
    abort_early: stop a round once the objective stalls.
    targeted: reach ``target`` instead of leaving ``y``.
    eps: optional L2 radius onto which the result is projected.
    """

    name = "cw"
    norms = (Norm.L2,)
    minimum_norm = True

    def __init__(
        self,
        *,
        confidence: float = 0.0,
        c: float = 1e-2,
        binary_search_steps: int = 9,
        steps: int = 1000,
        lr: float = 1e-2,
        abort_early: bool = True,
        targeted: bool = False,
        eps: float | None = None,
        batch_size: int = 256,
        seed: int | None = 0,
    ) -> None:
        super().__init__(norm=Norm.L2, eps=eps, targeted=targeted, batch_size=batch_size, seed=seed)
        if (
            isinstance(confidence, bool)
            or not isinstance(confidence, int | float)
            or not (math.isfinite(confidence) and confidence >= 0)
        ):
            raise ConfigurationError(f"confidence must be a finite number >= 0, got {confidence!r}")
        check_positive(c, "c")
        check_positive(binary_search_steps, "binary_search_steps", integer=True)
        check_positive(steps, "steps", integer=True)
        check_positive(lr, "lr")
        self.confidence = float(confidence)
        self.c = float(c)
        self.binary_search_steps = int(binary_search_steps)
        self.steps = int(steps)
        self.lr = float(lr)
        self.abort_early = bool(abort_early)

    def _run(
        self,
        classifier: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        n = x.shape[0]
        lo, hi = classifier.bounds
        mid, half = (hi + lo) / 2, (hi - lo) / 2
        labels = y if target is None else target
        kappa = self.confidence
        one_hot = torch.nn.functional.one_hot(labels, classifier.num_classes).bool()
        reduce_dims = tuple(range(1, x.dim()))
        view = (-1,) + (1,) * (x.dim() - 1)

        w0 = torch.atanh(((x - mid) / half).clamp(-_TANH_LIMIT, _TANH_LIMIT))
        const = torch.full((n,), self.c, dtype=x.dtype, device=x.device)
        lower = torch.zeros_like(const)
        upper = torch.full_like(const, _UPPER_INIT)
        best_l2 = torch.full_like(const, math.inf)
        best_adv = x.clone()
        beta1, beta2 = _ADAM_BETAS
        check_every = max(1, self.steps // 10)
        lr = self.lr / (hi - lo)

        for _ in range(self.binary_search_steps):
            w = w0.clone()
            m = torch.zeros_like(w)
            v = torch.zeros_like(w)
            succeeded = torch.zeros(n, dtype=torch.bool, device=x.device)
            previous = math.inf
            for step in range(self.steps):
                with torch.enable_grad():
                    w.requires_grad_(True)
                    x_adv = mid + half * torch.tanh(w)
                    l2sq = (x_adv - x).pow(2).sum(dim=reduce_dims)
                    logits = classifier.logits(x_adv)
                    z_label = logits.gather(1, labels[:, None]).squeeze(1)
                    z_other = logits.masked_fill(one_hot, -math.inf).amax(dim=1)
                    # how far the goal still is: <= -kappa once the attack has succeeded
                    gap = z_label - z_other if target is None else z_other - z_label
                    loss = l2sq + const * (gap + kappa).clamp_min(0)
                    total = loss.sum()
                    (grad,) = torch.autograd.grad(total, w)
                with torch.no_grad():
                    x_adv = x_adv.detach()
                    l2sq = l2sq.detach()
                    won = gap.detach() < -kappa
                    succeeded |= won
                    better = won & (l2sq < best_l2)
                    best_l2 = torch.where(better, l2sq, best_l2)
                    best_adv = torch.where(better.view(view), x_adv, best_adv)
                    # Adam on w, element-wise, hence independent per sample
                    t = step + 1
                    m.mul_(beta1).add_(grad, alpha=1 - beta1)
                    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    step_size = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
                    w = w.detach().addcdiv_(m, v.sqrt().add_(_ADAM_EPS), value=-step_size)
                if self.abort_early and step % check_every == 0:
                    current = float(total.detach())
                    if current > previous * 0.9999:
                        break
                    previous = current
            with torch.no_grad():
                upper = torch.where(succeeded, torch.minimum(upper, const), upper)
                lower = torch.where(succeeded, lower, torch.maximum(lower, const))
                bracketed = upper < _UPPER_INIT
                const = torch.where(bracketed, (lower + upper) / 2, const * 10)
        return best_adv
