"""Binomial statistics for randomized smoothing: Clopper-Pearson bounds and the two-sided
binomial test at p = 1/2. Vectorised over numpy arrays of counts; no torch here, the counts
arrive once the sampling loop is over."""

from __future__ import annotations

import numpy as np
from scipy import stats

__all__ = ["binomial_p_value", "clopper_pearson_lower"]


def clopper_pearson_lower(successes: np.ndarray, trials: int, alpha: float) -> np.ndarray:
    """One-sided ``(1 - alpha)`` Clopper-Pearson lower confidence bound on a binomial proportion.

    ``successes`` are counts out of ``trials``; a count of 0 gives a bound of 0.
    Clopper & Pearson, "The use of confidence or fiducial limits illustrated in the case of the
    binomial", Biometrika 1934.
    """
    k = np.asarray(successes, dtype=np.float64)
    safe = np.maximum(k, 1.0)
    bound = stats.beta.ppf(alpha, safe, trials - safe + 1.0)
    return np.where(k > 0, bound, 0.0).astype(np.float64)


def binomial_p_value(top: np.ndarray, runner_up: np.ndarray) -> np.ndarray:
    """Two-sided p-value of ``top`` successes in ``top + runner_up`` trials under p = 1/2.

    The distribution is symmetric at 1/2, so the p-value is twice the lower tail of the smaller
    count, capped at 1 (the same number as ``scipy.stats.binomtest(..., p=0.5)``).
    """
    a = np.asarray(top, dtype=np.int64)
    b = np.asarray(runner_up, dtype=np.int64)
    total = a + b
    low = np.minimum(a, b)
    tail = stats.binom.cdf(low, np.maximum(total, 1), 0.5)
    p = np.minimum(1.0, 2.0 * tail)
    return np.where(total > 0, p, 1.0).astype(np.float64)
