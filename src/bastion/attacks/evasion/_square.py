"""Private helpers of the black-box attacks: Square's window geometry, patterns and p schedule,
and the per-sample query record shared by Square and HopSkipJump.

Everything is torch-native and batched over samples; nothing here queries a model.
"""

from __future__ import annotations

import math

import torch

from bastion.errors import ConfigurationError
from bastion.models.base import Capability, Classifier

__all__ = [
    "QueryRecorder",
    "as_images",
    "centre_pattern",
    "l2_init",
    "p_schedule",
    "place_pattern",
    "random_signs",
    "side_l2",
    "side_linf",
    "split_pattern",
    "window",
]

#: iterations (out of 10,000) after which the paper halves the square fraction p
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


class QueryRecorder:
    """Mixin that records the exact number of model queries each sample cost.

    :meth:`EvasionAttack.generate` reports only the total; attacks that meter their queries per
    sample append one ``(n_batch,)`` tensor per batch with :meth:`_record_queries`. The record is
    cleared at the start of every ``generate`` call (``_reset``) and read back, in input order,
    from :attr:`queries_` and into :attr:`EvasionResult.sample_queries`.
    """

    _query_log: list[torch.Tensor]

    @property
    def queries_(self) -> torch.Tensor | None:
        """Per-sample queries of the last ``generate`` call (``None`` before the first call)."""
        log = getattr(self, "_query_log", None)
        if not log:
            return None
        return torch.cat(log)

    def _record_queries(self, per_sample: torch.Tensor) -> None:
        if not hasattr(self, "_query_log"):
            self._query_log = []
        self._query_log.append(per_sample.detach().to("cpu", torch.long))

    def _reset(self) -> None:
        self._query_log = []
        super()._reset()  # type: ignore[misc]

    def _sample_queries(self) -> torch.Tensor | None:
        return self.queries_


def as_images(x: torch.Tensor, classifier: Classifier, attack: str) -> torch.Tensor:
    """View a batch as images ``(n, c, h, w)``; inputs ``(h, w)`` get one channel.

    Square's updates are squares of pixels, so inputs without two spatial sides of at least 2
    (for instance 1-d feature vectors) are refused with a :class:`ConfigurationError`.
    """
    shape = tuple(classifier.input_shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or min(shape[1:]) < 2:
        raise ConfigurationError(
            f"{attack} perturbs square windows of an image and needs inputs of shape (c, h, w) "
            f"or (h, w) with h, w >= 2; the model takes {tuple(classifier.input_shape)}. "
            "For feature vectors use a decision-based attack (hopskipjump)"
            + ("" if Capability.GRADIENTS not in classifier.capabilities
               else " or a gradient one (pgd, apgd-ce, ...)")
        )
    return x.reshape(x.shape[0], *shape)


def p_schedule(p_init: float, iteration: int, n_iters: int) -> float:
    """The fraction of pixels changed at ``iteration``: ``p_init`` halved at the paper's
    iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000, rescaled from a budget of
    10,000 queries to ``n_iters``."""
    it = int(iteration / max(n_iters, 1) * 10_000)
    halvings = sum(1 for b in _HALVINGS if it > b)
    return p_init / 2**halvings


def random_signs(
    shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor
) -> torch.Tensor:
    """Independent uniform ±1 values of ``shape`` on ``like``'s device and dtype."""
    bits = torch.randint(0, 2, shape, generator=generator, device=like.device)
    return (2 * bits - 1).to(like.dtype)


def window(
    size: int, h: int, w: int, m: int, generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random ``size``×``size`` window per sample, inside an ``h``×``w`` image.

    Returns ``(rel_rows (m, h), rel_cols (m, w), mask (m, 1, h, w))``: each pixel's offset from
    its sample's window corner, and whether it lies inside the window.
    """
    top = torch.randint(0, h - size + 1, (m,), generator=generator, device=device)
    left = torch.randint(0, w - size + 1, (m,), generator=generator, device=device)
    rel_r = torch.arange(h, device=device)[None, :] - top[:, None]
    rel_c = torch.arange(w, device=device)[None, :] - left[:, None]
    in_r = (rel_r >= 0) & (rel_r < size)
    in_c = (rel_c >= 0) & (rel_c < size)
    mask = (in_r[:, :, None] & in_c[:, None, :])[:, None]
    return rel_r, rel_c, mask


def centre_pattern(a: int, b: int, *, device: torch.device | None = None) -> torch.Tensor:
    """An ``a``×``b`` bump concentrated at its centre, unit L2 norm.

    A pixel at Chebyshev distance ``k`` from the centre gets ``sum_{j >= k} 1/(j+1)^2`` over the
    rings that contain it: the concentric-squares pattern of the L2 Square attack.
    """
    if a == 0 or b == 0:
        return torch.zeros(a, b, device=device)
    rings = max(a // 2, b // 2) + 1
    weights = 1.0 / torch.arange(1, rings + 1, device=device, dtype=torch.float32) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[k] = sum_{j >= k} weights[j]
    dr = (torch.arange(a, device=device) - a // 2).abs()
    dc = (torch.arange(b, device=device) - b // 2).abs()
    dist = torch.maximum(dr[:, None], dc[None, :])
    out = tail[dist]
    return out / out.norm()


def split_pattern(size: int, *, device: torch.device | None = None) -> torch.Tensor:
    """The L2 update pattern: a ``size``×``size`` square whose upper half is a positive centre
    bump and lower half a negative one, unit L2 norm."""
    top = centre_pattern(size // 2, size, device=device)
    bottom = centre_pattern(size - size // 2, size, device=device)
    out = torch.cat([top, -bottom], dim=0)
    return out / out.norm().clamp_min(1e-12)


def place_pattern(
    pattern: torch.Tensor,
    rel_r: torch.Tensor,
    rel_c: torch.Tensor,
    mask: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """Put ``pattern`` (s, s), transposed for a random half of the samples, in each sample's
    window; zeros elsewhere. Returns ``(m, 1, h, w)``."""
    s = pattern.shape[0]
    both = torch.stack([pattern, pattern.T])
    m = rel_r.shape[0]
    pick = torch.randint(0, 2, (m,), generator=generator, device=pattern.device)
    rr = rel_r.clamp(0, s - 1)
    cc = rel_c.clamp(0, s - 1)
    values = both[pick[:, None, None], rr[:, :, None], cc[:, None, :]]
    return values[:, None] * mask.to(values.dtype)


def l2_init(x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    """The L2 starting perturbation: a grid of split centre bumps (tiles of side about h/5),
    each with a random sign per channel, rescaled to L2 norm ``eps``. Shape of ``x``."""
    n, c, h, w = x.shape
    side = max(1, min(h, w) // 5)
    nh, nw = h // side, w // side
    top, left = (h - nh * side) // 2, (w - nw * side) // 2
    tile = split_pattern(side, device=x.device).to(x.dtype).repeat(nh, nw)
    signs = random_signs((n, c, nh, nw), generator, x)
    signs = signs.repeat_interleave(side, dim=2).repeat_interleave(side, dim=3)
    delta = torch.zeros_like(x)
    delta[:, :, top : top + nh * side, left : left + nw * side] = signs * tile
    norms = delta.reshape(n, -1).norm(dim=1).clamp_min(1e-12)
    return delta * (eps / norms).reshape(n, 1, 1, 1)


def side_linf(p: float, h: int, w: int) -> int:
    """Side of the L∞ square: ``round(sqrt(p·h·w))`` within [1, min(h, w) - 1]."""
    s = round(math.sqrt(p * h * w))
    return min(max(s, 1), min(h, w) - 1)


def side_l2(p: float, h: int, w: int) -> int:
    """Side of the L2 square: ``round(sqrt(p·h·w))``, at least 3, odd, within [1, min(h, w) - 1]."""
    s = max(round(math.sqrt(p * h * w)), 3)
    if s % 2 == 0:
        s += 1
    return min(max(s, 1), min(h, w) - 1)
