"""Statistics shared by inference and validation: CDF sketches, KS, chi-square, PSI, BH.

A reference distribution is kept as a :class:`~bastion.data.contracts.model.Sketch`: the exact
empirical CDF when the data have few distinct values, otherwise the values at evenly spaced
quantiles (a piecewise-linear CDF). Both make a two-sample KS test possible later without the
reference data, with the reference size entering the p-value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import special, stats

from bastion.data.contracts.model import DriftTest, Sketch

__all__ = [
    "benjamini_hochberg",
    "chi2_test",
    "drift_tests",
    "ks_test",
    "make_sketch",
    "psi_categorical",
    "psi_numeric",
    "sig",
    "sketch_cdf",
    "sketch_quantile",
]

#: a column with at most this many distinct values keeps its exact empirical CDF
EXACT_MAX = 100
#: quantile knots kept for a column with more distinct values
KNOTS = 101
_PSI_FLOOR = 1e-4


def sig(value: float, digits: int = 6) -> float:
    """``value`` rounded to ``digits`` significant digits, as a plain float (YAML-friendly)."""
    v = float(value)
    if v == 0.0 or not math.isfinite(v):
        return v
    return float(f"{v:.{digits}g}")


def make_sketch(values: np.ndarray) -> Sketch | None:
    """A CDF sketch of the finite ``values`` (``None`` when there are none)."""
    x = np.asarray(values, dtype=np.float64)
    x = np.sort(x[np.isfinite(x)])
    if x.size == 0:
        return None
    uniq, counts = np.unique(x, return_counts=True)
    if uniq.size <= EXACT_MAX:
        cdf = np.cumsum(counts) / x.size
        return Sketch(
            values=tuple(sig(v) for v in uniq), cdf=tuple(sig(c, 5) for c in cdf), exact=True
        )
    probs = np.linspace(0.0, 1.0, KNOTS)
    knots = np.quantile(x, probs)
    # ties at a knot are an atom: keep the highest probability seen at each distinct value
    vals: list[float] = []
    cdf_list: list[float] = []
    for v, p in zip(knots, probs, strict=True):
        sv = sig(v)
        if vals and sv <= vals[-1]:
            cdf_list[-1] = max(cdf_list[-1], float(p))
        else:
            vals.append(sv)
            cdf_list.append(float(p))
    # the CDF at a value includes every sample equal to it
    for i, v in enumerate(vals):
        cdf_list[i] = max(cdf_list[i], float(np.searchsorted(x, v, side="right")) / x.size)
    cdf_list = list(np.maximum.accumulate(cdf_list))
    return Sketch(values=tuple(vals), cdf=tuple(sig(c, 5) for c in cdf_list), exact=False)


def sketch_cdf(sketch: Sketch, x: np.ndarray) -> np.ndarray:
    """The reference CDF ``P(X <= x)`` at each of ``x``."""
    xs = np.asarray(sketch.values, dtype=np.float64)
    cs = np.asarray(sketch.cdf, dtype=np.float64)
    if sketch.exact:
        idx = np.searchsorted(xs, x, side="right") - 1
        out = np.where(idx >= 0, cs[np.clip(idx, 0, None)], 0.0)
        return np.asarray(out, dtype=np.float64)
    return np.interp(x, xs, cs, left=0.0, right=1.0)


def sketch_quantile(sketch: Sketch, p: np.ndarray) -> np.ndarray:
    """The smallest sketch value whose CDF reaches each probability of ``p``."""
    xs = np.asarray(sketch.values, dtype=np.float64)
    cs = np.asarray(sketch.cdf, dtype=np.float64)
    idx = np.clip(np.searchsorted(cs, p, side="left"), 0, xs.size - 1)
    return xs[idx]


def ks_test(sketch: Sketch, n_reference: int, batch: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov–Smirnov statistic and asymptotic p-value of ``batch`` vs a sketch.

    The statistic is the largest gap between the batch's empirical CDF and the reference CDF,
    taken on both sides of every batch value. The p-value uses the effective size
    ``n·m/(n+m)`` with Stephens' small-sample correction; with discrete data it is conservative.
    """
    x = np.asarray(batch, dtype=np.float64)
    x = x[np.isfinite(x)]
    m = x.size
    if m == 0 or n_reference <= 0:
        return 0.0, 1.0
    uniq, counts = np.unique(x, return_counts=True)
    right = np.cumsum(counts) / m
    left = right - counts / m
    f_at = sketch_cdf(sketch, uniq)
    f_before = sketch_cdf(sketch, np.nextafter(uniq, -np.inf))
    d = float(max(np.max(np.abs(right - f_at)), np.max(np.abs(left - f_before))))
    en = math.sqrt(n_reference * m / (n_reference + m))
    p = float(special.kolmogorov((en + 0.12 + 0.11 / en) * d))
    return d, min(max(p, 0.0), 1.0)


def chi2_test(
    reference_counts: Mapping[str, int], batch_counts: Mapping[str, int]
) -> tuple[float, float] | None:
    """Chi-square test of homogeneity of a batch's category counts and the reference's.

    Categories whose expected batch count is under 5 are pooled so the approximation holds.
    ``None`` when fewer than two groups remain (nothing to compare).
    """
    keys = [k for k in reference_counts if reference_counts[k] > 0 or batch_counts.get(k, 0) > 0]
    m = sum(batch_counts.get(k, 0) for k in keys)
    n = sum(reference_counts[k] for k in keys)
    if m == 0 or n == 0:
        return None
    big = [k for k in keys if m * reference_counts[k] / n >= 5]
    small = [k for k in keys if k not in big]
    ref_rows = [float(reference_counts[k]) for k in big]
    bat_rows = [float(batch_counts.get(k, 0)) for k in big]
    if small:
        ref_small = float(sum(reference_counts[k] for k in small))
        bat_small = float(sum(batch_counts.get(k, 0) for k in small))
        if m * ref_small / n >= 5 or not big:
            ref_rows.append(ref_small)
            bat_rows.append(bat_small)
        else:  # still too small: fold into the smallest large group
            j = int(np.argmin(ref_rows))
            ref_rows[j] += ref_small
            bat_rows[j] += bat_small
    if len(ref_rows) < 2:
        return None
    table = np.array([ref_rows, bat_rows])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return None
    res = stats.chi2_contingency(table, correction=False)
    return float(res.statistic), float(res.pvalue)


def _psi(expected: np.ndarray, actual: np.ndarray) -> float:
    e = np.maximum(expected, _PSI_FLOOR)
    a = np.maximum(actual, _PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def psi_numeric(sketch: Sketch, batch: np.ndarray, bins: int = 10) -> float | None:
    """Population stability index over the reference deciles (``None`` for an empty batch)."""
    x = np.asarray(batch, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return None
    edges = np.unique(sketch_quantile(sketch, np.arange(1, bins) / bins))
    ref_cum = np.concatenate([[0.0], sketch_cdf(sketch, edges), [1.0]])
    ref_p = np.diff(ref_cum)
    counts = np.bincount(np.searchsorted(edges, x, side="left"), minlength=edges.size + 1)
    return _psi(ref_p, counts / x.size)


def psi_categorical(
    reference_counts: Mapping[str, int], batch_counts: Mapping[str, int]
) -> float | None:
    """Population stability index over categories (unseen ones pooled into one bin)."""
    m = sum(batch_counts.values())
    n = sum(reference_counts.values())
    if m == 0 or n == 0:
        return None
    keys = list(reference_counts)
    ref_p = np.array([reference_counts[k] / n for k in keys] + [0.0])
    unseen = sum(v for k, v in batch_counts.items() if k not in reference_counts)
    bat_p = np.array([batch_counts.get(k, 0) / m for k in keys] + [unseen / m])
    return _psi(ref_p, bat_p)


def benjamini_hochberg(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values), in the order given."""
    p = np.asarray(p_values, dtype=np.float64)
    k = p.size
    if k == 0:
        return p
    order = np.argsort(p)
    ranked = p[order] * k / np.arange(1, k + 1)
    q_sorted = np.minimum.accumulate(ranked[::-1])[::-1]
    q = np.empty(k)
    q[order] = np.minimum(q_sorted, 1.0)
    return q


def drift_tests(
    raw: Sequence[tuple[str, str, float, float, float | None]], fdr: float
) -> tuple[DriftTest, ...]:
    """:class:`DriftTest` objects from ``(column, test, statistic, p, psi)`` tuples.

    The p-values are adjusted together (Benjamini–Hochberg); a test with a q-value at or under
    ``fdr`` has drifted.
    """
    q = benjamini_hochberg([r[3] for r in raw])
    return tuple(
        DriftTest(column=c, test=t, statistic=sig(s), p_value=sig(p), q_value=sig(float(qv)),  # type: ignore[arg-type]
                  psi=None if psi is None else sig(psi), drifted=bool(qv <= fdr))
        for (c, t, s, p, psi), qv in zip(raw, q, strict=True)
    )
