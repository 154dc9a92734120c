"""The engine shared by the APGD attacks (Croce & Hein 2020, Algorithm 1).

One call of :func:`apgd_run` is one APGD run from a random start for a batch:

- step size ``eta`` starts at ``2 * eps`` per sample;
- each iteration takes a steepest-ascent step ``z = P(x_k + eta * normalize(grad))`` and then a
  momentum step ``x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1}))`` with
  ``alpha = 0.75`` (``P`` projects onto the eps-ball and the input bounds);
- at the checkpoints ``w_j = ceil(p_j * steps)`` with ``p_0 = 0``, ``p_1 = 0.22`` and
  ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, the step size of a sample is halved when
  either (1) fewer than ``rho * (w_j - w_{j-1})`` of the iterations since the last checkpoint
  increased its loss, or (2) its step size was not halved at the last checkpoint and its best loss
  has not improved since; a halved sample restarts from its best point (momentum reset to zero).

Each iteration costs exactly one forward and one backward pass, on the samples that are not yet
fooled: a sample leaves the run at its first successful iterate, which is what it returns. A sample
that is never fooled returns its highest-loss iterate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bastion.attacks.evasion._common import input_gradient, normalize, project, random_in_ball
from bastion.models.base import Classifier
from bastion.threat import Norm

__all__ = ["APGDOutcome", "LossFn", "apgd_run", "checkpoints", "halve_step"]

#: per-sample loss to maximise, from ``(logits, y, target)``
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

MOMENTUM = 0.75


def checkpoints(steps: int) -> list[int]:
    """The iterations ``w_1 < w_2 < ...`` (all ``<= steps``) where the step size is reviewed.

    >>> checkpoints(100)
    [22, 41, 57, 70, 80, 87, 93, 99]
    """
    ps = [0.0, 0.22]
    while True:
        nxt = ps[-1] + max(ps[-1] - ps[-2] - 0.03, 0.06)
        if nxt > 1.0:
            break
        ps.append(nxt)
    # the small tolerance keeps 0.41 * 100 at 41 despite floating-point error
    ws = sorted({math.ceil(p * steps - 1e-9) for p in ps[1:]})
    return [w for w in ws if 0 < w <= steps]


def halve_step(
    n_up: torch.Tensor,
    window: int,
    rho: float,
    reduced_before: torch.Tensor,
    f_max: torch.Tensor,
    f_max_before: torch.Tensor,
) -> torch.Tensor:
    """Which samples get their step size halved at a checkpoint (the paper's two conditions).

    ``n_up`` counts the iterations since the previous checkpoint (``window`` of them) that
    increased the loss; ``reduced_before`` says whether the step was halved at the previous
    checkpoint; ``f_max`` and ``f_max_before`` are the best losses now and then.

    >>> halve_step(torch.tensor([5, 8, 8]), 10, 0.75, torch.tensor([False, False, True]),
    ...            torch.tensor([2.0, 1.0, 1.0]), torch.tensor([1.0, 1.0, 1.0])).tolist()
    [True, True, False]
    """
    few_increases = n_up.float() < rho * window
    stalled = ~reduced_before & (f_max <= f_max_before)
    return few_increases | stalled


@dataclass(frozen=True)
class APGDOutcome:
    """One run's result per sample: the iterate to keep, whether it succeeded, its loss."""

    x: torch.Tensor
    fooled: torch.Tensor
    loss: torch.Tensor


def _step(
    x0: torch.Tensor,
    v: torch.Tensor,
    norm: Norm,
    eps: float,
    bounds: tuple[float, float],
) -> torch.Tensor:
    """Project ``v`` onto the ``eps``-ball around ``x0`` and then onto the bounds."""
    return (x0 + project(v - x0, norm, eps)).clamp_(bounds[0], bounds[1])


def _bind(
    loss: LossFn, y: torch.Tensor, target: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    def bound(logits: torch.Tensor) -> torch.Tensor:
        return loss(logits, y, target)

    return bound


def _col(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape((-1,) + (1,) * (like.dim() - 1))


def apgd_run(
    classifier: Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor,
    *,
    norm: Norm,
    eps: float,
    steps: int,
    rho: float,
    loss: LossFn,
    targeted_goal: bool,
    generator: torch.Generator,
    rules: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    relax: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> APGDOutcome:
    """Run APGD once on a batch (see the module docstring).

    ``loss(logits, y, target)`` is maximised. A sample counts as fooled when its prediction equals
    ``target`` (``targeted_goal``) or differs from ``y`` (otherwise); ``target`` is only passed
    through to ``loss`` when the goal is untargeted.

    ``rules(x_iter, x0)`` (tabular data) projects every iterate onto the data's rules before
    the model sees it: losses, gradients, successes and the kept best points are all those of
    rule-abiding inputs, while the steps move the unrounded iterate, kept inside the convex
    part of the rules by ``relax`` (straight through the rounding).
    """
    n = x.shape[0]
    bounds = classifier.bounds
    x_out = x.clone()
    fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
    loss_out = torch.full((n,), -math.inf, device=x.device, dtype=x.dtype)
    if n == 0 or eps <= 0:
        return APGDOutcome(x_out, fooled, loss_out)

    # per-sample state of the samples still in the run; `idx` maps them back to the batch
    idx = torch.arange(n, device=x.device)
    x0, yy, tt = x, y, target
    xk = (x + random_in_ball(x, norm, eps, generator)).clamp_(bounds[0], bounds[1])
    x_prev = xk.clone()
    eta = torch.full((n,), 2.0 * eps, device=x.device, dtype=x.dtype)
    f_max = torch.full((n,), -math.inf, device=x.device, dtype=x.dtype)
    x_max = xk.clone()
    g_max = torch.zeros_like(x)
    f_prev = torch.zeros_like(f_max)
    n_up = torch.zeros(n, dtype=torch.long, device=x.device)
    f_max_check = f_max.clone()
    reduced_check = torch.zeros(n, dtype=torch.bool, device=x.device)
    ws = checkpoints(steps)
    j, last_w = 0, 0

    if relax is not None:
        xk = relax(xk, x)
    for k in range(steps + 1):
        xe = xk if rules is None else rules(xk, x0)  # what the model sees: inside the rules
        if k < steps:
            f, g, logits = input_gradient(classifier, xe, _bind(loss, yy, tt))
        else:  # the last iterate needs its loss and prediction only
            with torch.no_grad():
                logits = classifier.logits(xe)
                f = loss(logits, yy, tt)
            g = g_max
        with torch.no_grad():
            pred = logits.argmax(dim=1)
            hit = pred == tt if targeted_goal else pred != yy
            if bool(hit.any()):
                x_out[idx[hit]] = xe[hit]
                fooled[idx[hit]] = True
                loss_out[idx[hit]] = f[hit]
            better = f > f_max
            f_max = torch.where(better, f, f_max)
            x_max = torch.where(_col(better, xk), xe, x_max)
            g_max = torch.where(_col(better, xk), g, g_max)
            if k > 0:
                n_up += (f > f_prev).long()
            f_prev = f
            if k == 0:
                f_max_check = f_max.clone()
            if k == steps:
                break

            if j < len(ws) and k == ws[j]:
                reduce = halve_step(n_up, k - last_w, rho, reduced_check, f_max, f_max_check)
                eta = torch.where(reduce, eta / 2, eta)
                back = _col(reduce, xk)
                xk = torch.where(back, x_max, xk)
                x_prev = torch.where(back, x_max, x_prev)
                g = torch.where(back, g_max, g)
                reduced_check = reduce
                f_max_check = f_max.clone()
                n_up.zero_()
                last_w = k
                j += 1

            if bool(hit.any()):
                keep = ~hit
                if not bool(keep.any()):
                    break
                idx, x0, yy, tt = idx[keep], x0[keep], yy[keep], tt[keep]
                xk, x_prev, g = xk[keep], x_prev[keep], g[keep]
                x_max, g_max, f_max, f_prev = x_max[keep], g_max[keep], f_max[keep], f_prev[keep]
                eta, n_up = eta[keep], n_up[keep]
                f_max_check, reduced_check = f_max_check[keep], reduced_check[keep]

            e = _col(eta, xk)
            z = _step(x0, xk + e * normalize(g, norm), norm, eps, bounds)
            a = MOMENTUM if k > 0 else 1.0
            x_next = _step(x0, xk + a * (z - xk) + (1 - a) * (xk - x_prev), norm, eps, bounds)
            if relax is not None:
                x_next = relax(x_next, x0)
            x_prev, xk = xk, x_next

    with torch.no_grad():
        rest = ~fooled[idx]
        if bool(rest.any()):
            x_out[idx[rest]] = x_max[rest]
            loss_out[idx[rest]] = f_max[rest]
    return APGDOutcome(x_out, fooled, loss_out)
