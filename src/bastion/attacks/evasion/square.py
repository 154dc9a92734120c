"""Square attack: score-based random search, L∞ or L2.

Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020. https://arxiv.org/abs/1912.00049

A random search that uses only the model's scores (``classifier.logits`` under ``no_grad``,
never a gradient). Each iteration proposes a change confined to a random square window and keeps
it when it lowers the loss (or fools the model). The square covers a fraction ``p`` of the
pixels, halved on the paper's schedule (iterations 10, 50, 200, ..., 8000 of 10,000, rescaled to
``max_queries``).

- L∞: starts from vertical stripes of ±eps (one sign per column and channel); an update sets a
  square of side ``round(sqrt(p·h·w))`` to ±eps, one random sign per channel.
- L2: starts from a grid of centre-concentrated bumps of norm ``eps``; an update moves the mass
  of two random squares into the first one, as a new centre-concentrated bump of random sign
  plus the old content, then rescales the whole perturbation to norm ``eps``.

Queries are metered per sample: the start costs one query, every iteration one more, a sample is
no longer queried once it is fooled, and no sample is ever queried more than ``max_queries``
times. The per-sample counts of the last call are in :attr:`Square.queries_`.

Inputs must be images ``(c, h, w)`` (or ``(h, w)``) with ``h, w >= 2``; 1-d feature vectors
are refused with a :class:`~bastion.errors.ConfigurationError` (the windows would be
meaningless): use HopSkipJump or a gradient attack there.

Defaults: ``max_queries=5000``, ``p_init=0.8`` for L∞ and ``0.1`` for L2, margin loss.

Example
-------
>>> import torch
>>> from torch import nn
>>> from bastion.models import TorchClassifier
>>> from bastion.attacks.evasion.square import Square
>>> _ = torch.manual_seed(0)
>>> net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
>>> clf = TorchClassifier(net, input_shape=(1, 4, 4), num_classes=3)
>>> x = torch.rand(6, 1, 4, 4)
>>> attack = Square(norm="linf", eps=0.1, max_queries=50)
>>> res = attack.generate(clf, x)
>>> bool(((res.x_adv - x).abs() <= 0.1 + 1e-6).all()), int(attack.queries_.max()) <= 50
(True, True)
"""

from __future__ import annotations

import logging

import torch

from bastion.attacks.evasion._common import margin_loss
from bastion.attacks.evasion._square import (
    QueryRecorder,
    as_images,
    l2_init,
    p_schedule,
    place_pattern,
    random_signs,
    side_l2,
    side_linf,
    split_pattern,
    window,
)
from bastion.attacks.evasion.base import EvasionAttack, check_positive
from bastion.errors import ConfigurationError
from bastion.models.base import Capability, Classifier
from bastion.threat import Norm

__all__ = ["Square"]

log = logging.getLogger(__name__)

_LOSSES = ("margin", "ce")
_RESAMPLES = 10  # redraws of an L∞ window whose proposal would not change the image


class Square(QueryRecorder, EvasionAttack):
    """Square attack (score-based), L∞ or L2.

    Parameters
    ----------
    norm: "linf" or "l2".
    eps: radius of the perturbation ball.
    max_queries: hard limit of model queries per sample (the start counts as one).
    p_init: initial fraction of pixels in a square; ``None`` picks the paper's default per norm
        (0.8 for L∞, 0.1 for L2).
    loss: "margin" (logit margin, the paper's choice) or "ce" (cross-entropy).
    targeted: reach ``target`` instead of leaving ``y``.
    batch_size: samples attacked together.
    seed: seed of the random search.

    Attributes
    ----------
    queries_: per-sample queries of the last :meth:`generate` call, in input order.
    """

    name = "square"
    requires = Capability.LABELS | Capability.SCORES

    def __init__(
        self,
        *,
        norm: str | Norm = "linf",
        eps: float,
        max_queries: int = 5000,
        p_init: float | None = None,
        loss: str = "margin",
        targeted: bool = False,
        batch_size: int = 256,
        seed: int | None = 0,
    ) -> None:
        super().__init__(norm=norm, eps=eps, targeted=targeted, batch_size=batch_size, seed=seed)
        check_positive(max_queries, "max_queries", integer=True)
        if p_init is None:
            p_init = 0.8 if self.norm is Norm.LINF else 0.1
        check_positive(p_init, "p_init")
        if p_init > 1:
            raise ConfigurationError(f"p_init must be in (0, 1], got {p_init!r}")
        if loss not in _LOSSES:
            raise ConfigurationError(f"loss must be one of {_LOSSES}, got {loss!r}")
        self.max_queries = int(max_queries)
        self.p_init = float(p_init)
        self.loss = loss

    # -- the algorithm ----------------------------------------------------------------------
    def _run(
        self,
        classifier: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        xi = as_images(x, classifier, type(self).__name__)
        n, c, _, w = xi.shape
        queries = torch.zeros(n, dtype=torch.long, device=x.device)
        eps = float(self.eps or 0.0)
        if eps == 0.0:
            self._record_queries(queries)
            return x.clone()
        labels = y if target is None else target
        lo, hi = classifier.bounds
        with torch.no_grad():
            if self.norm is Norm.LINF:
                stripes = random_signs((n, c, 1, w), generator, xi) * eps
                x_best = (xi + stripes).clamp(lo, hi)
            else:
                x_best = (xi + l2_init(xi, eps, generator)).clamp(lo, hi)
            obj, fooled = self._evaluate(classifier, x_best, labels, x.shape)
            queries += 1
            for it in range(self.max_queries - 1):
                active = ~fooled
                if not bool(active.any()):
                    break
                idx = active.nonzero().squeeze(1)
                p = p_schedule(self.p_init, it, self.max_queries)
                if self.norm is Norm.LINF:
                    x_new = self._propose_linf(xi[idx], x_best[idx], eps, p, (lo, hi), generator)
                else:
                    x_new = self._propose_l2(xi[idx], x_best[idx], eps, p, (lo, hi), generator)
                obj_new, fooled_new = self._evaluate(classifier, x_new, labels[idx], x.shape)
                queries[idx] += 1
                accept = (obj_new < obj[idx]) | fooled_new
                keep = idx[accept]
                x_best[keep] = x_new[accept]
                obj[keep] = obj_new[accept]
                fooled[keep] = fooled_new[accept]
        self._record_queries(queries)
        log.debug(
            "square: %d of %d samples fooled, %.1f queries per sample on average",
            int(fooled.sum()),
            n,
            float(queries.float().mean()),
        )
        return x_best.reshape(x.shape)

    def _evaluate(
        self,
        classifier: Classifier,
        x_img: torch.Tensor,
        labels: torch.Tensor,
        shape: torch.Size,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One query per row: the objective to minimise and whether the model is fooled."""
        logits = classifier.logits(x_img.reshape(x_img.shape[0], *shape[1:])).detach()
        pred = logits.argmax(dim=1)
        if self.targeted:
            fooled = pred == labels
            if self.loss == "margin":
                obj = margin_loss(logits, labels)  # max_{j != t} z_j - z_t
            else:
                obj = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        else:
            fooled = pred != labels
            if self.loss == "margin":
                obj = -margin_loss(logits, labels)  # z_y - max_{j != y} z_j
            else:
                obj = -torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        return obj, fooled

    @staticmethod
    def _propose_linf(
        x: torch.Tensor,
        x_best: torch.Tensor,
        eps: float,
        p: float,
        bounds: tuple[float, float],
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Set one random square per sample to ±eps (a sign per channel), redrawing the signs
        of a sample whose proposal would leave its image unchanged."""
        m, c, h, w = x.shape
        size = side_linf(p, h, w)
        _, _, mask = window(size, h, w, m, generator, x.device)
        delta = x_best - x
        x_new = x_best
        todo = torch.ones(m, dtype=torch.bool, device=x.device)
        for _ in range(_RESAMPLES):
            signs = random_signs((m, c, 1, 1), generator, x) * eps
            cand = (x + torch.where(mask, signs, delta)).clamp(*bounds)
            x_new = torch.where(todo[:, None, None, None], cand, x_new)
            changed = ((x_new - x_best).abs() > 1e-7).reshape(m, -1).any(dim=1)
            todo = ~changed
            if not bool(todo.any()):
                break
        return x_new

    @staticmethod
    def _propose_l2(
        x: torch.Tensor,
        x_best: torch.Tensor,
        eps: float,
        p: float,
        bounds: tuple[float, float],
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Move the mass of two random squares into the first, as a centre bump of random sign
        plus its old content; then rescale the perturbation to L2 norm eps."""
        m, c, h, w = x.shape
        size = side_l2(p, h, w)
        rel_r, rel_c, mask1 = window(size, h, w, m, generator, x.device)
        _, _, mask2 = window(size, h, w, m, generator, x.device)
        m1 = mask1.to(x.dtype)
        union = (mask1 | mask2).to(x.dtype)
        delta = x_best - x
        norm_image = delta.reshape(m, -1).norm(dim=1).reshape(m, 1, 1, 1)
        norm_w1 = (delta * m1).pow(2).sum(dim=(2, 3), keepdim=True).sqrt()
        norm_union = (delta * union).pow(2).sum(dim=(2, 3), keepdim=True).sqrt()
        bump = place_pattern(
            split_pattern(size, device=x.device).to(x.dtype), rel_r, rel_c, mask1, generator
        )
        new = bump * random_signs((m, c, 1, 1), generator, x) + delta * m1 / (norm_w1 + 1e-10)
        new_norm = new.pow(2).sum(dim=(2, 3), keepdim=True).sqrt().clamp_min(1e-12)
        mass = ((eps**2 - norm_image**2).clamp_min(0) / c + norm_union**2).sqrt()
        delta = delta * (1 - union) + new * (mass / new_norm)
        scale = eps / delta.reshape(m, -1).norm(dim=1).clamp_min(1e-12)
        return (x + delta * scale.reshape(m, 1, 1, 1)).clamp(*bounds)
