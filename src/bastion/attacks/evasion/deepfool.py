"""DeepFool.

Moosavi-Dezfooli, Fawzi & Frossard, "DeepFool: a simple and accurate method to fool deep
neural networks", CVPR 2016. https://arxiv.org/abs/1511.04599

A minimum-norm, untargeted attack. At each step the classifier is linearised around the
current point: for the ``candidates`` classes with the highest clean logits (the true class
first), ``f_k = z_k - z_y`` and ``w_k = grad z_k - grad z_y``. The closest linearised boundary
is ``k* = argmin_k |f_k| / ||w_k||_q`` (``q`` the dual norm: 2 for L2, 1 for L∞) and the step
that reaches it is

    L2:  r = |f_k*| / ||w_k*||_2^2 * w_k*
    L∞:  r = |f_k*| / ||w_k*||_1 * sign(w_k*)

Steps accumulate into ``r_total``; the candidate is ``x + (1 + overshoot) * r_total``, clipped
to the bounds (and ``r_total`` is cut back to what the clipping left). Components of ``w`` that
would push an input already at a bound further out are dropped before the step is computed,
so that the linear step is not wasted on what clipping removes.

Each sample stops as soon as it is misclassified (or after ``steps`` steps); a sample already
misclassified is returned unchanged. Samples that have stopped are no longer sent to the
model.

Per step: one forward pass and ``candidates`` backward passes over the still-active samples.
No randomness.

Norm: L2 or L∞. Defaults: ``steps=50``, ``overshoot=0.02``, ``candidates=10``. ``eps`` is
optional: when given, the result is projected onto the eps-ball.

Shapes: ``x`` is ``(n, *input_shape)`` inside the model's bounds, ``y`` is ``(n,)``.

Example
-------
>>> import torch
>>> from torch import nn
>>> from bastion.models import TorchClassifier
>>> from bastion.attacks.evasion.deepfool import DeepFool
>>> _ = torch.manual_seed(0)
>>> clf = TorchClassifier(nn.Linear(4, 3), input_shape=(4,), num_classes=3,
...                       bounds=(-10.0, 10.0))
>>> x = torch.rand(8, 4)
>>> res = DeepFool(norm="l2").generate(clf, x)
>>> res.success_rate
1.0
"""

from __future__ import annotations

import math

import torch

from bastion.attacks.evasion.base import EvasionAttack, check_positive
from bastion.errors import ConfigurationError
from bastion.models.base import Classifier
from bastion.threat import Norm

__all__ = ["DeepFool"]

# |f| is stretched by this much (relative, then absolute, in logit units) so that a step
# lands just past the linearised boundary rather than on it
_PUSH_REL = 1e-4
_PUSH_ABS = 1e-6
_TINY = 1e-12


class DeepFool(EvasionAttack):
    """DeepFool minimum-norm attack, L2 or L∞ (see the module docstring).

    Parameters
    ----------
    norm: "l2" or "linf".
    steps: maximum number of linearisation steps.
    overshoot: relative extra length of the final perturbation (>= 0).
    candidates: how many of the top classes (the true one included) are considered (>= 2).
    eps: optional radius onto which the result is projected.
    """

    name = "deepfool"
    minimum_norm = True
    supports_targeted = False

    def __init__(
        self,
        *,
        norm: str | Norm = "l2",
        steps: int = 50,
        overshoot: float = 0.02,
        candidates: int = 10,
        eps: float | None = None,
        batch_size: int = 256,
        seed: int | None = 0,
    ) -> None:
        super().__init__(norm=norm, eps=eps, targeted=False, batch_size=batch_size, seed=seed)
        check_positive(steps, "steps", integer=True)
        if (
            isinstance(overshoot, bool)
            or not isinstance(overshoot, int | float)
            or not (math.isfinite(overshoot) and overshoot >= 0)
        ):
            raise ConfigurationError(f"overshoot must be a finite number >= 0, got {overshoot!r}")
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 2:
            raise ConfigurationError(
                f"candidates must be an integer >= 2 (the true class and at least one other), "
                f"got {candidates!r}"
            )
        self.steps = int(steps)
        self.overshoot = float(overshoot)
        self.candidates = int(candidates)

    def _run(
        self,
        classifier: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        lo, hi = classifier.bounds
        k = min(self.candidates, classifier.num_classes)
        view = (-1,) + (1,) * (x.dim() - 1)
        scale = 1.0 + self.overshoot

        with torch.no_grad():
            logits = classifier.logits(x)
        # candidate classes per sample: the true class first, then the top others
        others = logits.scatter(1, y[:, None], -math.inf).topk(k - 1, dim=1).indices
        classes = torch.cat([y[:, None], others], dim=1)

        x_adv = x.clone()
        r_total = torch.zeros_like(x)
        active = logits.argmax(dim=1) == y
        for _ in range(self.steps):
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xi = x_adv[idx]
            ci = classes[idx]
            pred, f, w = self._linearise(classifier, xi, ci)
            with torch.no_grad():
                fooled = pred != y[idx]
                # a step moves along +w; drop the components the bounds would clip away
                blocked = ((xi <= lo).unsqueeze(1) & (w < 0)) | ((xi >= hi).unsqueeze(1) & (w > 0))
                w = w.masked_fill(blocked, 0.0)
                # distance to each linearised boundary, in the attack's norm
                flat_w = w.flatten(2)
                dual = flat_w.abs().sum(2) if self.norm is Norm.LINF else flat_w.norm(dim=2)
                dual = dual.clamp_min(_TINY)
                best = (f.abs() / dual).argmin(dim=1)
                w_best = w[torch.arange(idx.numel(), device=x.device), best]
                f_best = f.gather(1, best[:, None]).squeeze(1).abs() * (1 + _PUSH_REL) + _PUSH_ABS
                d_best = dual.gather(1, best[:, None]).squeeze(1)
                if self.norm is Norm.LINF:
                    r = (f_best / d_best).view(view) * w_best.sign()
                else:
                    r = (f_best / d_best.square()).view(view) * w_best
                move = idx[~fooled]
                x_new = (x[move] + scale * (r_total[move] + r[~fooled])).clamp(lo, hi)
                # keep r_total equal to the perturbation actually applied (after clipping)
                r_total[move] = (x_new - x[move]) / scale
                x_adv[move] = x_new
                active[idx[fooled]] = False
        return x_adv

    @staticmethod
    def _linearise(
        classifier: Classifier, x: torch.Tensor, classes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Predictions, ``f = z_k - z_y`` and ``w = grad f`` for the candidates (``y`` first).

        Returns the predicted labels ``(n,)``, ``f`` of shape ``(n, k - 1)`` and ``w`` of shape
        ``(n, k - 1, *input_shape)``.
        """
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logits = classifier.logits(xg)
            z = logits.gather(1, classes)
            grads = []
            for j in range(classes.shape[1]):
                (g,) = torch.autograd.grad(z[:, j].sum(), xg, retain_graph=j + 1 < classes.shape[1])
                grads.append(g)
        z = z.detach()
        g = torch.stack(grads, dim=1)
        return logits.detach().argmax(dim=1), z[:, 1:] - z[:, :1], g[:, 1:] - g[:, :1]
