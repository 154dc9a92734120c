"""Shared maths of the evasion attacks: norms, projections, losses and gradients.

Everything here is torch-native and batched; no function leaves the device of its inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from bastion.models.base import Classifier
from bastion.threat import Norm

__all__ = [
    "ascent_step",
    "ce_loss",
    "clip",
    "dlr_loss",
    "dlr_targeted_loss",
    "flat_norm",
    "input_gradient",
    "linf_box",
    "margin_loss",
    "maximise_loss",
    "normalize",
    "project",
    "random_in_ball",
]


def _view(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample vector ``(n,)`` to broadcast against a batch ``x``."""
    return t.reshape((-1,) + (1,) * (x.dim() - 1))


def flat_norm(delta: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Per-sample norm of a batch of perturbations, shape ``(n,)``."""
    flat = delta.reshape(delta.shape[0], -1)
    if norm is Norm.LINF:
        return flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    return flat.norm(p=2, dim=1)


def normalize(g: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Steepest-ascent direction of unit ``norm``: sign for L∞, unit vector for L2."""
    if norm is Norm.LINF:
        return g.sign()
    n = flat_norm(g, Norm.L2).clamp_min(1e-12)
    return g / _view(n, g)


def project(delta: torch.Tensor, norm: Norm, eps: float | torch.Tensor) -> torch.Tensor:
    """Project perturbations onto the ``norm`` ball of radius ``eps`` (scalar or per-sample)."""
    if norm is Norm.LINF:
        if isinstance(eps, torch.Tensor):
            e = _view(eps, delta)
            return torch.maximum(torch.minimum(delta, e), -e)
        return delta.clamp(-eps, eps)
    n = flat_norm(delta, Norm.L2)
    e = eps if isinstance(eps, torch.Tensor) else torch.full_like(n, float(eps))
    factor = torch.where(n > e, e / n.clamp_min(1e-12), torch.ones_like(n))
    return delta * _view(factor, delta)


def clip(x: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    """Clip to the model's input bounds."""
    return x.clamp(bounds[0], bounds[1])


def random_in_ball(
    x: torch.Tensor, norm: Norm, eps: float, generator: torch.Generator
) -> torch.Tensor:
    """A random perturbation inside the ``norm`` ball: uniform for L∞, uniform in volume for L2."""
    if norm is Norm.LINF:
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (2 * u - 1) * eps
    g = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    direction = normalize(g, Norm.L2)
    d = x[0].numel()
    r = torch.rand((x.shape[0],), generator=generator, device=x.device, dtype=x.dtype)
    radius = eps * r.pow(1.0 / d)
    return direction * _view(radius, x)


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy."""
    return F.cross_entropy(logits, y, reduction="none")


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample ``max_{j != y} z_j - z_y``: positive exactly when the sample is misclassified."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return other.amax(dim=1) - z_y


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of Logits Ratio loss of Croce & Hein (2020), untargeted, per sample."""
    if logits.shape[1] < 3:
        return margin_loss(logits, y)
    sorted_z, order = logits.sort(dim=1)
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    top_is_y = order[:, -1] == y
    best_other = torch.where(top_is_y, sorted_z[:, -2], sorted_z[:, -1])
    denom = (sorted_z[:, -1] - sorted_z[:, -3]).clamp_min(1e-12)
    return -(z_y - best_other) / denom


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR loss of Croce & Hein (2020), per sample (to be maximised)."""
    if logits.shape[1] < 4:
        z_t = logits.gather(1, target[:, None]).squeeze(1)
        z_y = logits.gather(1, y[:, None]).squeeze(1)
        return z_t - z_y
    sorted_z, _ = logits.sort(dim=1)
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    denom = (sorted_z[:, -1] - 0.5 * (sorted_z[:, -3] + sorted_z[:, -4])).clamp_min(1e-12)
    return -(z_y - z_t) / denom


LossFn = Callable[[torch.Tensor], torch.Tensor]


def input_gradient(
    classifier: Classifier, x: torch.Tensor, loss: LossFn
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradient of ``loss(logits)`` (per sample, summed) with respect to the inputs.

    Returns ``(per_sample_loss, gradient, logits)``, all detached. Only the input gradient is
    computed: the model's parameters get none.
    """
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        logits = classifier.logits(xg)
        per_sample = loss(logits)
        (grad,) = torch.autograd.grad(per_sample.sum(), xg)
    return per_sample.detach(), grad.detach(), logits.detach()


def linf_box(
    x: torch.Tensor, eps: float, bounds: tuple[float, float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The L∞ ball of radius ``eps`` around ``x`` intersected with ``bounds``, as ``(low, high)``.

    Clamping to this box is the L∞ projection followed by the clip to the bounds, in one op.
    """
    return (x - eps).clamp_(min=bounds[0]), (x + eps).clamp_(max=bounds[1])


def ascent_step(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    x: torch.Tensor,
    *,
    norm: Norm,
    eps: float,
    step_size: float,
    bounds: tuple[float, float],
    box: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """One projected steepest-ascent step: ``x_adv + step_size * normalize(grad)``, projected
    onto the ``norm`` ball of radius ``eps`` around ``x`` and clipped to ``bounds``.

    A negative ``step_size`` descends. For L∞, ``box`` (from :func:`linf_box`) saves
    recomputing the projection box when ``x`` does not change between steps.
    """
    if norm is Norm.LINF:
        low, high = box if box is not None else linf_box(x, eps, bounds)
        return torch.clamp(x_adv + step_size * grad.sign(), low, high)
    moved = x_adv + step_size * normalize(grad, norm)
    return (x + project(moved - x, norm, eps)).clamp_(bounds[0], bounds[1])


def maximise_loss(
    loss: LossFn,
    x: torch.Tensor,
    x_start: torch.Tensor,
    *,
    norm: Norm,
    eps: float,
    step_size: float,
    steps: int,
    bounds: tuple[float, float],
) -> torch.Tensor:
    """A lean PGD loop: ``steps`` projected ascent steps on ``loss(x_adv).sum()`` from ``x_start``.

    ``loss`` maps a batch of inputs to per-sample (or already summed) losses; it runs the model
    itself, in whatever mode the caller set. Only the input gradient is computed. No early
    stop, no bookkeeping: this is the inner maximisation of adversarial training. Returns the
    detached iterate, inside the ball around ``x`` and the bounds.
    """
    box = linf_box(x, eps, bounds) if norm is Norm.LINF else None
    x_adv = x_start.detach()
    if box is not None:
        x_adv = torch.clamp(x_adv, box[0], box[1])
    else:
        x_adv = (x + project(x_adv - x, norm, eps)).clamp_(bounds[0], bounds[1])
    for _ in range(steps):
        with torch.enable_grad():
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(loss(x_adv).sum(), x_adv)
        with torch.no_grad():
            x_adv = ascent_step(
                x_adv.detach(),
                grad,
                x,
                norm=norm,
                eps=eps,
                step_size=step_size,
                bounds=bounds,
                box=box,
            )
    return x_adv.detach()
