"""Private helpers of HopSkipJump: a metered decision oracle, the batched binary search to the
decision boundary and the Monte-Carlo estimate of the boundary's normal.

Everything is torch-native and batched over samples; the only model call is
``classifier.predict`` (labels), made through :class:`Oracle`, which charges every row to the
sample it belongs to and never lets a sample go past its budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from bastion.attacks.evasion._common import flat_norm
from bastion.models.base import Classifier
from bastion.models.torch_model import TorchClassifier
from bastion.threat import Norm

__all__ = ["Oracle", "binary_search", "blend", "estimate_direction", "thresholds"]

#: input floats per ``predict`` call (at most 8192 rows): small enough that the network's
#: activations stay in cache (a chunk of 8192 MNIST rows is 400 MB per activation, streamed
#: through memory and page-faulted in on every call, which made each query about 1.5× as
#: dear); only speed, never the query count, depends on it
_PREDICT_ELEMENTS = 1 << 18
_PREDICT_ROWS = 8192
#: floats per Monte-Carlo chunk (samples × probes × features)
_PROBE_ELEMENTS = 1 << 23


def _view(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape((-1,) + (1,) * (like.dim() - 1))


class Oracle:
    """The decision function ``phi`` (is this input adversarial?), with per-sample metering.

    ``labels`` are the true classes (untargeted) or the targets (targeted) of the ``n`` samples
    of the batch; ``spent[i]`` counts the rows sent to the model for sample ``i`` and never
    exceeds ``budget``.
    """

    def __init__(
        self,
        classifier: Classifier,
        labels: torch.Tensor,
        *,
        targeted: bool,
        budget: int | None,
        rules: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        origin: torch.Tensor | None = None,
    ) -> None:
        if rules is not None and origin is None:
            raise ValueError("an oracle with rules needs the original rows (origin)")
        self.classifier = classifier
        self.labels = labels
        self.targeted = targeted
        self.budget = budget
        self.rules = rules
        self.origin = origin
        self.spent = torch.zeros(labels.shape[0], dtype=torch.long, device=labels.device)
        self._layout: torch.memory_format | None = None  # decided at the first query

    def _format(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the memory layout the model runs fastest on: channels-last for a torch
        convolutional network on the CPU (its max-pool and convolutions have fast
        channels-last kernels; the values, and so the decisions, do not depend on the layout
        beyond float rounding) when a one-row probe shows the model accepts it and gives the
        same logits, else as it is. The probe is the attack's own input, not a query: nothing
        it returns informs the search."""
        if self._layout is None:
            self._layout = _preferred_layout(self.classifier, x[:1])
        return _channels_last(x) if self._layout is torch.channels_last else x

    def constrain(self, x: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        """Rows ``x`` projected onto the rules (unchanged without rules)."""
        if self.rules is None or self.origin is None or x.shape[0] == 0:
            return x
        return self.rules(x, self.origin[owner])

    def remaining(self, idx: torch.Tensor) -> torch.Tensor:
        """Queries left to samples ``idx`` (a large number when there is no budget)."""
        if self.budget is None:
            return torch.full_like(idx, 2**62)
        return self.budget - self.spent[idx]

    def can(self, idx: torch.Tensor, rows: int = 1) -> torch.Tensor:
        """Mask of the samples in ``idx`` that may still send ``rows`` queries."""
        return self.remaining(idx) >= rows

    def __call__(self, x: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        """``phi`` for rows ``x``, each charged to sample ``owner[row]``; bool ``(rows,)``.

        With ``rules`` the model sees each row projected onto them (towards its sample's
        original row): ``phi(x)`` says whether ``constrain(x)`` is adversarial.
        """
        if x.shape[0] == 0:
            return torch.zeros(0, dtype=torch.bool, device=owner.device)
        x = self.constrain(x, owner)
        rows = max(1, min(_PREDICT_ROWS, _PREDICT_ELEMENTS // max(1, x[0].numel())))
        pred = torch.cat(
            [
                self.classifier.predict(self._format(x[i : i + rows]))
                for i in range(0, x.shape[0], rows)
            ]
        ).to(owner.device)
        self.spent.index_add_(0, owner, torch.ones_like(owner))
        lab = self.labels[owner]
        return pred == lab if self.targeted else pred != lab


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` (n, c, h, w) stored channels-last. With one channel both layouts are the same
    memory and torch would treat the batch as NCHW; the channel stride is then set to 1 (the
    channels-last stride; it never moves, the dimension has size 1) so that the convolution
    picks its channels-last kernels and the rest of the network follows."""
    t = x.contiguous(memory_format=torch.channels_last)
    if t.shape[1] == 1 and t.stride(1) != 1:
        t = t.as_strided(t.shape, (t.shape[2] * t.shape[3], 1, t.shape[3], 1))
    return t


def _preferred_layout(classifier: Classifier, probe: torch.Tensor) -> torch.memory_format:
    module = getattr(classifier, "module", None)
    if (
        not isinstance(classifier, TorchClassifier)
        or not isinstance(module, nn.Module)
        or probe.dim() != 4
        or probe.device.type != "cpu"
        or not any(isinstance(m, nn.Conv2d) for m in module.modules())
    ):
        return torch.contiguous_format
    try:
        with torch.no_grad(), classifier.evaluation():
            plain = classifier._logits(probe.contiguous())
            last = classifier._logits(_channels_last(probe))
    except RuntimeError:  # e.g. a .view() on the input: keep the caller's layout
        return torch.contiguous_format
    if plain.shape != last.shape or not torch.allclose(plain, last, rtol=1e-4, atol=1e-5):
        return torch.contiguous_format
    return torch.channels_last


def blend(x: torch.Tensor, x_adv: torch.Tensor, alpha: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Points between ``x`` (alpha 0) and ``x_adv``: the convex combination for L2 (alpha in
    [0, 1]); for L∞ ``x_adv`` clipped to the L∞ ball of radius alpha around ``x``."""
    a = _view(alpha, x)
    if norm is Norm.L2:
        return (1 - a) * x + a * x_adv
    return torch.maximum(torch.minimum(x_adv, x + a), x - a)


def binary_search(
    oracle: Oracle,
    idx: torch.Tensor,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    norm: Norm,
    theta: float,
) -> torch.Tensor:
    """Move each adversarial ``x_adv`` towards its ``x`` until it sits on the boundary.

    Bisects ``alpha`` of :func:`blend` until the bracket is narrower than ``theta`` (L2) or
    ``min(theta·dist, theta)`` (L∞). Returns the adversarial end of each bracket: when a
    sample's budget runs out mid-search it keeps the last adversarial point it found.
    """
    m = x.shape[0]
    if norm is Norm.L2:
        high = torch.ones(m, device=x.device, dtype=x.dtype)
        thr = torch.full_like(high, theta)
    else:
        high = flat_norm(x_adv - x, Norm.LINF)
        thr = torch.clamp(high * theta, max=theta)
    low = torch.zeros_like(high)
    while True:
        go = ((high - low) > thr) & oracle.can(idx)
        if not bool(go.any()):
            break
        j = go.nonzero().squeeze(1)
        mid = (high[j] + low[j]) / 2
        adv = oracle(blend(x[j], x_adv[j], mid, norm), idx[j])
        high[j] = torch.where(adv, mid, high[j])
        low[j] = torch.where(adv, low[j], mid)
    return blend(x, x_adv, high, norm)


def estimate_direction(
    oracle: Oracle,
    idx: torch.Tensor,
    point: torch.Tensor,
    n_evals: torch.Tensor,
    radius: torch.Tensor,
    norm: Norm,
    bounds: tuple[float, float],
    generator: torch.Generator,
) -> torch.Tensor:
    """Unit-L2 estimate of the direction towards the adversarial side at boundary ``point``.

    Sample ``i`` sends ``n_evals[i]`` probes ``point + radius·u`` (``u`` Gaussian for L2,
    uniform in the cube for L∞, each scaled to unit L2 norm, clipped to the bounds) and
    averages ``(phi - mean phi)·u``; when every probe agrees, the mean of ``±u``. Probes of many
    samples go to the model together.
    """
    m = point.shape[0]
    shape = point.shape[1:]
    d = point[0].numel()
    out = torch.zeros_like(point)
    top = int(n_evals.max()) if m else 0
    per_chunk = max(1, _PROBE_ELEMENTS // max(1, top * d))
    lo, hi = bounds
    for start in range(0, m, per_chunk):
        sl = slice(start, start + per_chunk)
        p, k, r = point[sl], n_evals[sl], radius[sl]
        c = p.shape[0]
        size = (c, top, *shape)
        if norm is Norm.L2:
            u = torch.randn(size, generator=generator, device=p.device, dtype=p.dtype)
        else:
            u = 2 * torch.rand(size, generator=generator, device=p.device, dtype=p.dtype) - 1
        u = u / flat_norm(u.reshape(c * top, -1), Norm.L2).clamp_min(1e-12).reshape(
            (c, top) + (1,) * len(shape)
        )
        rr = r.reshape((c, 1) + (1,) * len(shape))
        probes = (p[:, None] + rr * u).clamp(lo, hi)
        u = (probes - p[:, None]) / rr.clamp_min(1e-12)
        mask = torch.arange(top, device=p.device)[None, :] < k[:, None]
        owner = idx[sl][:, None].expand(c, top)[mask]
        adv = oracle(probes[mask], owner)
        f = torch.zeros(c, top, device=p.device, dtype=p.dtype)
        f[mask] = 2 * adv.to(p.dtype) - 1
        kf = k.to(p.dtype).clamp_min(1)
        mean_f = f.sum(dim=1) / kf
        unanimous = mean_f.abs() == 1
        weight = torch.where(unanimous[:, None], f, (f - mean_f[:, None]) * mask.to(p.dtype))
        g = (weight.reshape((c, top) + (1,) * len(shape)) * u).sum(dim=1) / _view(kf, p)
        out[sl] = g / _view(flat_norm(g, Norm.L2).clamp_min(1e-12), g)
    return out


def thresholds(d: int, gamma: float, norm: Norm) -> float:
    """The binary-search tolerance theta: ``gamma / d^{3/2}`` (L2) or ``gamma / d^2`` (L∞)."""
    return gamma / (d * math.sqrt(d)) if norm is Norm.L2 else gamma / (d * d)
