"""HopSkipJump: decision-based minimum-norm attack, L2 or L∞.

Chen, Jordan & Wainwright, "HopSkipJumpAttack: A Query-Efficient Decision-Based Attack",
IEEE S&P 2020. https://arxiv.org/abs/1904.02144

Uses only the predicted labels (``classifier.predict``). Per sample:

1. **Start**: find an adversarial input (one of another class, or of the target class) and
   bisect towards ``x`` to the decision boundary. Candidates are tried in order: the points of
   ``starting_points`` (when given), nearest to ``x`` first, then up to ``init_size`` uniform
   noises inside the bounds; each try is one query of that sample. A sample without a start is
   returned unchanged (a failure).
2. **Iterate** ``t = 1, 2, ...``: estimate the direction of the adversarial side at the boundary
   point from ``min(init_num_evals·sqrt(t), max_num_evals)`` Monte-Carlo probes (their labels
   only), step along it (L2: the unit estimate; L∞: its sign) with a geometric step-size search
   starting at ``dist / sqrt(t)``, then bisect back to the boundary. The best (closest)
   adversarial point found is kept.

The probes of all active samples go to the model together (one ``predict`` call per iteration,
split only when it would exceed 8,192 rows or about 32 MiB of probes), and so do the bisection
and step-size queries of all samples. ``max_queries`` is a hard per-sample budget and the main
knob; ``steps`` optionally caps the iterations. ``eps`` is optional: when given, the result is
projected onto the eps-ball (as for every attack), and with ``early_stop=True`` a sample stops
as soon as it is within ``eps``, which saves queries but leaves its distance unminimised below
``eps`` (keep it off when the distances feed a robust-accuracy curve).
Per-sample query counts of the last call are in :attr:`HopSkipJump.queries_`.

**Targeted** attacks need a starting point of the target class: uniform noise rarely lands in a
given class, so pass ``starting_points``, a pool of inputs (for instance a few training images
of each class); the nearest pool points are tried first.

Defaults: ``norm="l2"``, ``max_queries=5000``, ``init_num_evals=100``, ``max_num_evals=10000``,
``init_size=100``, ``gamma=1.0`` (bisection tolerance ``gamma/d^1.5`` for L2, ``gamma/d^2`` for
L∞, with ``d`` the number of input features).

Example
-------
>>> import torch
>>> from torch import nn
>>> from bastion.models import TorchClassifier
>>> from bastion.attacks.evasion.hopskipjump import HopSkipJump
>>> _ = torch.manual_seed(0)
>>> clf = TorchClassifier(nn.Linear(4, 3), input_shape=(4,), num_classes=3)
>>> x = torch.rand(5, 4)
>>> attack = HopSkipJump(norm="l2", max_queries=300)
>>> res = attack.generate(clf, x)
>>> res.success_rate, int(attack.queries_.max()) <= 300
(1.0, True)
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from bastion.attacks.evasion._common import flat_norm
from bastion.attacks.evasion._hsj import (
    Oracle,
    binary_search,
    estimate_direction,
    thresholds,
)
from bastion.attacks.evasion._square import QueryRecorder
from bastion.attacks.evasion.base import EvasionAttack, check_positive
from bastion.errors import ConfigurationError
from bastion.models.base import Capability, Classifier, check_bounds
from bastion.threat import Norm

__all__ = ["HopSkipJump"]

log = logging.getLogger(__name__)

_MAX_HALVINGS = 25  # of the step size, per iteration


class HopSkipJump(QueryRecorder, EvasionAttack):
    """HopSkipJump (decision-based, minimum-norm), L2 or L∞.

    Parameters
    ----------
    norm: "l2" or "linf".
    max_queries: hard limit of model queries per sample (``None``: no limit; then give steps).
    steps: optional cap on the iterations per sample.
    max_num_evals: most Monte-Carlo probes of one direction estimate.
    init_num_evals: probes of the first estimate (grows as ``sqrt(t)``).
    init_size: most uniform-noise tries to find a starting adversarial point (after the pool).
    gamma: bisection tolerance factor.
    starting_points: optional pool of inputs ``(k, *input_shape)`` tried first as starting points
        (nearest to each sample first, one query per try); needed in practice for targeted
        attacks. Keep it small: a sample may try every point of it.
    targeted: reach ``target`` instead of leaving ``y``.
    eps: optional radius onto which the result is projected.
    early_stop: with ``eps``, stop a sample once it is within ``eps``.
    batch_size: samples attacked together.
    seed: seed of the random probes.

    Attributes
    ----------
    queries_: per-sample queries of the last :meth:`generate` call, in input order.
    """

    name = "hopskipjump"
    requires = Capability.LABELS
    norms = (Norm.L2, Norm.LINF)
    minimum_norm = True

    def __init__(
        self,
        *,
        norm: str | Norm = "l2",
        max_queries: int | None = 5000,
        steps: int | None = None,
        max_num_evals: int = 10_000,
        init_num_evals: int = 100,
        init_size: int = 100,
        gamma: float = 1.0,
        starting_points: torch.Tensor | None = None,
        targeted: bool = False,
        eps: float | None = None,
        early_stop: bool = False,
        batch_size: int = 128,
        seed: int | None = 0,
    ) -> None:
        super().__init__(norm=norm, eps=eps, targeted=targeted, batch_size=batch_size, seed=seed)
        if max_queries is None and steps is None:
            raise ConfigurationError(
                "HopSkipJump needs max_queries (a per-sample query budget) or steps, or both"
            )
        if max_queries is not None:
            check_positive(max_queries, "max_queries", integer=True)
        if steps is not None:
            check_positive(steps, "steps", integer=True)
        check_positive(max_num_evals, "max_num_evals", integer=True)
        check_positive(init_num_evals, "init_num_evals", integer=True)
        check_positive(init_size, "init_size", integer=True)
        check_positive(gamma, "gamma")
        if starting_points is not None:
            if (
                not isinstance(starting_points, torch.Tensor)
                or not torch.is_floating_point(starting_points)
                or starting_points.dim() < 2
                or starting_points.shape[0] == 0
                or not bool(torch.isfinite(starting_points).all())
            ):
                raise ConfigurationError(
                    "starting_points must be a non-empty floating-point tensor "
                    "(k, *input_shape) of finite values"
                )
            starting_points = starting_points.detach()
        self.max_queries = None if max_queries is None else int(max_queries)
        self.steps = None if steps is None else int(steps)
        self.max_num_evals = int(max_num_evals)
        self.init_num_evals = int(init_num_evals)
        self.init_size = int(init_size)
        self.gamma = float(gamma)
        self.early_stop = bool(early_stop)
        self._starting_points = starting_points

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters as JSON-ready values; the pool of starting points, a
        tensor, only by its size (``n_starting_points``)."""
        out = super().get_params()
        pool = self._starting_points
        out["n_starting_points"] = 0 if pool is None else int(pool.shape[0])
        return out

    # -- the algorithm ----------------------------------------------------------------------
    def _run(
        self,
        classifier: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        labels = y if target is None else target
        oracle = Oracle(
            classifier,
            labels,
            targeted=self.targeted,
            budget=self.max_queries,
            rules=self._rules(),
            origin=x,
        )
        bounds = classifier.bounds
        n, d = x.shape[0], x[0].numel()
        theta = thresholds(d, self.gamma, self.norm)
        reserve = math.ceil(math.log2(1 / theta)) + 1  # a bisection and one step check
        with torch.no_grad():
            found, start = self._initialise(oracle, classifier, x, generator)
            cur = x.clone()
            dist = torch.full((n,), math.inf, device=x.device, dtype=x.dtype)
            idx = found.nonzero().squeeze(1)
            if idx.numel():
                # With rules, every iterate is the projection the oracle judged adversarial.
                cur[idx] = oracle.constrain(
                    binary_search(oracle, idx, x[idx], start[idx], self.norm, theta), idx
                )
                dist[idx] = flat_norm(cur[idx] - x[idx], self.norm)
            best, best_dist = cur.clone(), dist.clone()
            everyone = torch.arange(n, device=x.device)
            t = 0
            while self.steps is None or t < self.steps:
                t += 1
                active = found & oracle.can(everyone, reserve + 1) & (best_dist > 0)
                if self.eps is not None and self.early_stop:
                    active &= best_dist > self.eps
                if not bool(active.any()):
                    break
                idx = active.nonzero().squeeze(1)
                n_evals = min(int(self.init_num_evals * math.sqrt(t)), self.max_num_evals)
                k = (oracle.remaining(idx) - reserve).clamp(min=1, max=n_evals)
                if t == 1:
                    radius = torch.full_like(dist[idx], 0.1 * (bounds[1] - bounds[0]))
                else:
                    scale = math.sqrt(d) if self.norm is Norm.L2 else float(d)
                    radius = scale * theta * dist[idx]
                direction = estimate_direction(
                    oracle, idx, cur[idx], k, radius, self.norm, bounds, generator
                )
                if self.norm is Norm.LINF:
                    direction = direction.sign()
                stepped, moved = self._step_search(
                    oracle, idx, cur[idx], direction, dist[idx] / math.sqrt(t), bounds
                )
                g = idx[moved]
                if g.numel() == 0:
                    continue
                cur[g] = oracle.constrain(
                    binary_search(oracle, g, x[g], stepped[moved], self.norm, theta), g
                )
                dist[g] = flat_norm(cur[g] - x[g], self.norm)
                better = g[dist[g] < best_dist[g]]
                best[better] = cur[better]
                best_dist[better] = dist[better]
        self._record_queries(oracle.spent)
        log.debug(
            "hopskipjump: %d of %d samples started, %d iterations, median distance %.4g",
            int(found.sum()),
            n,
            t,
            float(best_dist[found].median()) if bool(found.any()) else math.nan,
        )
        return best

    def _initialise(
        self,
        oracle: Oracle,
        classifier: Classifier,
        x: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample, the first adversarial candidate among the pool points (nearest first, all
        of them if needed) and then ``init_size`` uniform noises: ``(found mask, starts)``."""
        n = x.shape[0]
        lo, hi = classifier.bounds
        pool = self._pool(classifier, x.device)
        order = None
        if pool is not None:
            order = torch.cdist(x.reshape(n, -1), pool.reshape(pool.shape[0], -1)).argsort(dim=1)
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        start = x.clone()
        everyone = torch.arange(n, device=x.device)
        tries = self.init_size + (0 if pool is None else pool.shape[0])
        for j in range(tries):
            need = ~found & oracle.can(everyone)
            if not bool(need.any()):
                break
            i = need.nonzero().squeeze(1)
            if pool is not None and order is not None and j < pool.shape[0]:
                cand = pool[order[i, j]]
            else:
                u = torch.rand(x[i].shape, generator=generator, device=x.device, dtype=x.dtype)
                cand = lo + (hi - lo) * u
            adv = oracle(cand, i)
            start[i[adv]] = oracle.constrain(cand[adv], i[adv])
            found[i[adv]] = True
        return found, start

    def _pool(self, classifier: Classifier, device: torch.device) -> torch.Tensor | None:
        pool = self._starting_points
        if pool is None:
            return None
        if tuple(pool.shape[1:]) != tuple(classifier.input_shape):
            raise ConfigurationError(
                f"starting_points have shape {tuple(pool.shape)}; the model expects "
                f"(k, {', '.join(map(str, classifier.input_shape))})"
            )
        check_bounds(pool, classifier.bounds, name="starting_points")
        return pool.to(device)

    @staticmethod
    def _step_search(
        oracle: Oracle,
        idx: torch.Tensor,
        cur: torch.Tensor,
        direction: torch.Tensor,
        step: torch.Tensor,
        bounds: tuple[float, float],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Geometric step-size search: halve each sample's step until ``cur + step·direction``
        is adversarial. Returns the stepped points and which samples moved."""
        m = cur.shape[0]
        out = cur.clone()
        step = step.clone()
        moved = torch.zeros(m, dtype=torch.bool, device=cur.device)
        for _ in range(_MAX_HALVINGS):
            go = ~moved & oracle.can(idx)
            if not bool(go.any()):
                break
            j = go.nonzero().squeeze(1)
            shape = (-1,) + (1,) * (cur.dim() - 1)
            cand = (cur[j] + step[j].reshape(shape) * direction[j]).clamp(*bounds)
            adv = oracle(cand, idx[j])
            out[j[adv]] = cand[adv]
            moved[j[adv]] = True
            step[j[~adv]] /= 2
        return out, moved
