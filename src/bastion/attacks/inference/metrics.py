"""Metrics of confidentiality attacks: ROC, AUC, TPR at a fixed FPR, empirical ε, SSIM.

Membership scores follow one convention throughout: **higher means "more likely a member"**.

- :func:`roc_curve` sweeps every distinct score as a threshold (ties are never split, so the
  curve is exact), :func:`auc` integrates it by trapezoids and :func:`tpr_at_fpr` reads the
  largest TPR whose FPR does not exceed a target (Carlini et al. 2022 judge attacks by TPR at
  0.1% FPR, not by AUC).
- :func:`clopper_pearson` is the exact binomial confidence interval and
  :func:`empirical_epsilon` turns an attack's (TPR, FPR) pairs into a lower bound on the
  ε of any (ε, δ)-DP mechanism that could have produced them (Jagielski et al. 2020,
  Nasr et al. 2021): for every test, ``TPR <= e^ε FPR + δ`` and ``TNR <= e^ε FNR + δ``.
- :func:`ssim` is the structural similarity index of Wang et al. (2004), written in torch.

Example
-------
>>> import torch
>>> from bastion.attacks.inference.metrics import roc_curve, tpr_at_fpr
>>> roc = roc_curve(torch.tensor([0.9, 0.8, 0.3, 0.1]), torch.tensor([True, True, False, False]))
>>> roc.auc, tpr_at_fpr(roc, 0.0)
(1.0, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bastion.errors import ConfigurationError, InputError

__all__ = [
    "EpsilonBound",
    "RocCurve",
    "auc",
    "auc_interval",
    "clopper_pearson",
    "empirical_epsilon",
    "roc_curve",
    "ssim",
    "tpr_at_fpr",
]


@dataclass(frozen=True)
class RocCurve:
    """An ROC curve: ``fpr[i]``, ``tpr[i]`` for the rule "member when score >= thresholds[i]".

    The first point is ``(0, 0)`` with threshold ``+inf``; the last is ``(1, 1)``.
    ``n_pos``/``n_neg`` are the numbers of members and non-members the rates were counted on.
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    n_pos: int
    n_neg: int

    @property
    def auc(self) -> float:
        return auc(self.fpr, self.tpr)

    def tpr_at(self, fpr: float) -> float:
        return tpr_at_fpr(self, fpr)

    def points(self, *, max_points: int = 200) -> list[tuple[float, float]]:
        """Up to ``max_points`` ``(fpr, tpr)`` pairs (evenly thinned, ends kept) for plotting."""
        n = self.fpr.shape[0]
        idx = np.unique(np.linspace(0, n - 1, min(n, max_points)).round().astype(int))
        return [(float(self.fpr[i]), float(self.tpr[i])) for i in idx]


def _as_numpy(t: torch.Tensor | np.ndarray | Sequence[float], what: str) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        arr = t.detach().cpu().numpy()
    else:
        arr = np.asarray(t)
    if arr.ndim != 1:
        raise InputError(f"{what} must be 1-d, got shape {arr.shape}")
    return arr


def roc_curve(
    scores: torch.Tensor | np.ndarray | Sequence[float],
    labels: torch.Tensor | np.ndarray | Sequence[bool],
) -> RocCurve:
    """The exact ROC curve of ``scores`` (higher = member) against boolean ``labels``."""
    s = _as_numpy(scores, "scores").astype(np.float64)
    y = _as_numpy(labels, "labels").astype(bool)
    if s.shape != y.shape:
        raise InputError(f"scores ({s.shape[0]}) and labels ({y.shape[0]}) differ in length")
    if not np.all(np.isfinite(s)):
        raise InputError("scores contain NaN or infinite values")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise InputError(
            f"an ROC curve needs both members and non-members, got {n_pos} and {n_neg}"
        )
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    last_of_tie = np.r_[np.diff(s) != 0, True]
    tp, fp, thr = tp[last_of_tie], fp[last_of_tie], s[last_of_tie]
    return RocCurve(
        fpr=np.r_[0.0, fp / n_neg],
        tpr=np.r_[0.0, tp / n_pos],
        thresholds=np.r_[np.inf, thr],
        n_pos=n_pos,
        n_neg=n_neg,
    )


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under a curve by the trapezoidal rule (``fpr`` non-decreasing)."""
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def auc_interval(
    scores: torch.Tensor | np.ndarray | Sequence[float],
    labels: torch.Tensor | np.ndarray | Sequence[bool],
    *,
    n_boot: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Stratified percentile-bootstrap interval of the AUC: members and non-members are
    resampled separately (``n_boot`` times, seeded), each resample's AUC computed exactly
    (the Mann–Whitney statistic, ties counted half, equal to the trapezoidal ROC area).

    >>> lo, hi = auc_interval([0.9, 0.8, 0.7, 0.3, 0.2, 0.1], [1, 1, 0, 1, 0, 0])
    >>> 0.0 <= lo <= 8 / 9 <= hi <= 1.0
    True
    """
    from scipy.stats import rankdata

    s = _as_numpy(scores, "scores").astype(np.float64)
    y = _as_numpy(labels, "labels").astype(bool)
    if s.shape != y.shape or not np.all(np.isfinite(s)):
        raise InputError("scores and labels must be 1-d of one length, scores finite")
    if not 0.0 < confidence < 1.0 or n_boot < 1:
        raise ConfigurationError("confidence must lie in (0, 1) and n_boot be at least 1")
    pos, neg = s[y], s[~y]
    if pos.size == 0 or neg.size == 0:
        raise InputError("an AUC needs both members and non-members")
    rng = np.random.default_rng(seed)
    p_idx = rng.integers(0, pos.size, size=(n_boot, pos.size))
    n_idx = rng.integers(0, neg.size, size=(n_boot, neg.size))
    both = np.concatenate([pos[p_idx], neg[n_idx]], axis=1)
    ranks = rankdata(both, axis=1)
    u = ranks[:, : pos.size].sum(1) - pos.size * (pos.size + 1) / 2.0
    aucs = u / (pos.size * neg.size)
    alpha = 1.0 - confidence
    lo, hi = np.quantile(aucs, [alpha / 2, 1.0 - alpha / 2])
    return float(lo), float(hi)


def tpr_at_fpr(roc: RocCurve, fpr: float) -> float:
    """The largest TPR among thresholds whose FPR is at most ``fpr``."""
    if not (0.0 <= fpr <= 1.0):
        raise ConfigurationError(f"fpr must lie in [0, 1], got {fpr!r}")
    ok = roc.fpr <= fpr + 1e-12
    return float(roc.tpr[ok].max())


def clopper_pearson(
    k: int | np.ndarray, n: int, confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Exact two-sided binomial interval of level ``confidence`` for ``k`` successes in ``n``.

    >>> lo, hi = clopper_pearson(0, 10)
    >>> float(lo), round(float(hi), 4)
    (0.0, 0.3085)
    """
    from scipy.stats import beta

    if not 0.0 < confidence < 1.0:
        raise ConfigurationError(f"confidence must lie in (0, 1), got {confidence!r}")
    if n < 1:
        raise InputError(f"n must be at least 1, got {n}")
    k_arr = np.asarray(k, dtype=np.float64)
    if np.any(k_arr < 0) or np.any(k_arr > n):
        raise InputError(f"successes must lie in [0, {n}]")
    alpha = 1.0 - confidence
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = np.where(k_arr > 0, beta.ppf(alpha / 2, k_arr, n - k_arr + 1), 0.0)
        hi = np.where(k_arr < n, beta.ppf(1 - alpha / 2, k_arr + 1, n - k_arr), 1.0)
    return np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)


@dataclass(frozen=True)
class EpsilonBound:
    """An empirical lower bound on ε implied by a membership test.

    ``lower`` holds with probability at least ``confidence`` (each rate is bounded by its
    Clopper–Pearson interval); ``point`` uses the observed rates (``inf`` when a test makes no
    error of one kind). ``tpr``/``fpr`` are the rates of the test that gave ``lower``, and
    ``direction`` says which way that test points: ``"members"`` when it picks out members
    (scores at or above the threshold: ``TPR <= e^ε FPR + δ`` was violated), ``"non-members"``
    when it picks out non-members (scores below it: ``TNR <= e^ε FNR + δ``). A bound from the
    non-member direction comes from the low-score tail, e.g. non-members the model gets
    confidently wrong while it gets every member right; the TPR at low FPR, which only looks
    at the high-score end, can then be near zero and the AUC near 0.5 while ``lower`` is large.
    """

    lower: float
    point: float
    confidence: float
    delta: float
    tpr: float
    fpr: float
    direction: str = "members"

    def to_dict(self) -> dict[str, Any]:
        def num(v: float) -> float | None:
            return v if math.isfinite(v) else None

        return {
            "lower": self.lower,
            "point": num(self.point),
            "confidence": self.confidence,
            "delta": self.delta,
            "tpr": self.tpr,
            "fpr": self.fpr,
            "direction": self.direction,
        }

    def explain(self) -> str:
        """One sentence on the test behind the bound, for reports."""
        if self.lower <= 0.0:
            return "no threshold separates members from non-members beyond chance"
        if self.direction == "members":
            return (
                f"{self.tpr:.1%} of members but only {self.fpr:.1%} of non-members score above "
                "the threshold"
            )
        return (
            f"{1.0 - self.fpr:.1%} of non-members but only {1.0 - self.tpr:.1%} of members score "
            "below the threshold"
        )


def empirical_epsilon(
    tpr: float | Sequence[float] | np.ndarray,
    fpr: float | Sequence[float] | np.ndarray,
    n_pos: int,
    n_neg: int,
    delta: float = 0.0,
    confidence: float = 0.95,
) -> EpsilonBound:
    """Lower bound on ε from one test or a sweep of thresholds (``tpr``/``fpr`` arrays).

    Each rate is turned back into a count (``round(rate * n)``) and bounded by its two-sided
    Clopper–Pearson interval. The bound is the largest of ``log((TPR_lo - δ) / FPR_hi)`` and
    ``log((1 - FPR_hi - δ) / (1 - TPR_lo))`` over all thresholds (both directions of the
    test), and never below 0.

    Picking the best of ``k`` thresholds on the same scores is a choice made after seeing the
    data: the threshold just below the weakest member always shows no false negatives, so an
    uncorrected bound reads a large ε off a model whose AUC is near 0.5. The intervals are
    therefore Bonferroni-corrected: each of the ``2k`` rates is bounded at level
    ``1 - (1 - confidence) / (2k)``, which makes ``lower`` hold with probability
    ``confidence`` for the best threshold too. A single test (``k = 1``) keeps the plain
    intervals; for a stricter audit pick the threshold on held-out canaries.

    >>> b = empirical_epsilon(0.5, 0.0, 1000, 1000)
    >>> round(b.lower, 2), b.point
    (4.85, inf)
    """
    if not (isinstance(n_pos, int) and isinstance(n_neg, int)) or n_pos < 1 or n_neg < 1:
        raise InputError(f"n_pos and n_neg must be positive integers, got {n_pos!r}, {n_neg!r}")
    if not (0.0 <= delta < 1.0):
        raise ConfigurationError(f"delta must lie in [0, 1), got {delta!r}")
    t = np.atleast_1d(np.asarray(tpr, dtype=np.float64))
    f = np.atleast_1d(np.asarray(fpr, dtype=np.float64))
    if t.shape != f.shape:
        raise InputError(f"tpr and fpr must have the same shape, got {t.shape} and {f.shape}")
    if np.any((t < 0) | (t > 1) | (f < 0) | (f > 1)) or not np.all(np.isfinite(t + f)):
        raise InputError("tpr and fpr must be rates in [0, 1]")
    tp = np.rint(t * n_pos)
    fp = np.rint(f * n_neg)
    tests = int(np.unique(np.stack([tp, fp]), axis=1).shape[1])  # distinct thresholds
    level = 1.0 - (1.0 - confidence) / tests if tests > 1 else confidence
    tpr_lo, _ = clopper_pearson(tp, n_pos, level)
    _, fpr_hi = clopper_pearson(fp, n_neg, level)
    lower_1 = _log_ratio(tpr_lo - delta, fpr_hi)
    lower_2 = _log_ratio(1.0 - fpr_hi - delta, 1.0 - tpr_lo)
    lower_all = np.maximum(lower_1, lower_2)
    best = int(np.argmax(lower_all))
    direction = "members" if lower_1[best] >= lower_2[best] else "non-members"
    t_hat, f_hat = tp / n_pos, fp / n_neg
    point = np.maximum(
        _log_ratio(t_hat - delta, f_hat), _log_ratio(1.0 - f_hat - delta, 1.0 - t_hat)
    )
    return EpsilonBound(
        lower=max(0.0, float(lower_all[best])),
        point=max(0.0, float(point.max())),
        confidence=float(confidence),
        delta=float(delta),
        tpr=float(t_hat[best]),
        fpr=float(f_hat[best]),
        direction=direction,
    )


def _log_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``log(num / den)``, ``-inf`` where ``num <= 0`` and ``+inf`` where only ``den`` is 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, -np.inf)
    pos = num > 0
    with np.errstate(divide="ignore"):
        out = np.where(
            pos & (den > 0), np.log(np.where(pos, num, 1.0) / np.where(den > 0, den, 1.0)), out
        )
    return np.where(pos & (den <= 0), np.inf, out)


# -- SSIM -----------------------------------------------------------------------------------
def _as_images(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 4:
        return x
    if x.dim() == 3:
        return x.unsqueeze(1)
    if x.dim() == 2:
        return x.reshape(x.shape[0], 1, 1, x.shape[1])
    raise InputError(
        f"ssim expects (n, C, H, W), (n, H, W) or (n, D) tensors, got {tuple(x.shape)}"
    )


def _gaussian(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    r = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    data_range: float = 1.0,
    window: int = 7,
    sigma: float = 1.5,
) -> torch.Tensor:
    """Per-sample SSIM of two batches, shape ``(n,)`` (Wang et al. 2004).

    Local statistics use a Gaussian window of ``window`` pixels (shrunk to the image when the
    image is smaller), valid positions only; constants ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``
    with ``L = data_range``. Flat vectors ``(n, D)`` are treated as 1×D images.

    >>> x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    >>> ssim(x, x).tolist()
    [1.0, 1.0]
    """
    if a.shape != b.shape:
        raise InputError(f"ssim needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    if data_range <= 0 or window < 1 or sigma <= 0:
        raise ConfigurationError("data_range and sigma must be positive and window >= 1")
    x = _as_images(a.detach().double())
    y = _as_images(b.detach().double())
    _, c, h, w = x.shape
    kh, kw = min(window, h), min(window, w)
    g = _gaussian(kh, sigma, x.dtype, x.device)[:, None] * _gaussian(kw, sigma, x.dtype, x.device)
    kernel = g.expand(c, 1, kh, kw).contiguous()

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=c)

    mu_x, mu_y = filt(x), filt(y)
    sxx = filt(x * x) - mu_x**2
    syy = filt(y * y) - mu_y**2
    sxy = filt(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s_map = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    )
    return s_map.flatten(1).mean(1).float()
