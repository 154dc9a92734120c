"""Maximum mean discrepancy drift test (re-exported by :mod:`bastion.monitor.drift`)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

from bastion.errors import ConfigurationError, InputError
from bastion.monitor._drift_common import DriftResult, NumericDetector

__all__ = ["MMDDrift", "gaussian_kernel", "median_bandwidth"]

_MEDIAN_SAMPLE = 1000


def gaussian_kernel(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Gaussian kernel matrix ``exp(-||x_i - y_j||² / (2·bandwidth²))``, shape ``(n, m)``."""
    sq = (
        x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1).unsqueeze(0) - 2.0 * (x @ y.T)
    ).clamp_min_(0.0)
    return torch.exp(sq.mul_(-0.5 / bandwidth**2))


def median_bandwidth(x: torch.Tensor, *, seed: int = 0) -> float:
    """Median heuristic: the median Euclidean distance between distinct rows of ``x``.

    At most 1,000 rows (a seeded sample) are used. Falls back to the mean distance, then 1.0,
    when the median is zero (many duplicate rows).
    """
    if x.shape[0] > _MEDIAN_SAMPLE:
        g = torch.Generator().manual_seed(seed)
        x = x[torch.randperm(x.shape[0], generator=g)[:_MEDIAN_SAMPLE]]
    d = torch.cdist(x.double(), x.double())
    iu = torch.triu_indices(x.shape[0], x.shape[0], offset=1)
    dist = d[iu[0], iu[1]]
    for value in (torch.quantile(dist, 0.5), dist.mean()):  # the midpoint median
        if float(value) > 0.0:
            return float(value)
    return 1.0


class MMDDrift(NumericDetector):
    """Kernel two-sample test: unbiased squared MMD with a Gaussian kernel, permutation p-value.

    Gretton et al., *A Kernel Two-Sample Test*, JMLR 2012,
    https://jmlr.org/papers/v13/gretton12a.html.

    The bandwidth is fixed at construction (``bandwidth``, or the median heuristic on the
    reference), so the reference-by-reference kernel block is computed once. A test then needs
    the reference-by-batch and batch-by-batch blocks and **one** matrix product: all
    ``n_permutations`` relabellings of the pooled sample are rows of a ``(P+1, n+m)`` indicator
    matrix ``A``, and ``A·K`` gives every permutation's within- and between-sample kernel sums.
    The p-value is ``(1 + #{permuted ≥ observed}) / (1 + P)``, so it is never below
    ``1/(P+1)``: ``alpha`` must exceed that. Cost per test ``O(P·(n+m)²)`` time and
    ``O((n+m)²)`` memory; reduce ``n`` (a subsample of the reference) or the features
    (``reduce="pca"``) for speed.

    Args:
        reference: array or tensor ``(n, ...)``.
        alpha: false-alarm rate per tested batch (default 0.05).
        n_permutations: permutations for the p-value (default 100).
        bandwidth: Gaussian kernel width, or ``None`` for the median heuristic.
        preprocess, reduce, dim, seed: feature preparation, see
            :mod:`bastion.monitor.drift`; ``seed`` also drives the permutations.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> det = MMDDrift(rng.normal(size=(300, 5)), alpha=0.05, seed=0)
        >>> det.test(rng.normal(size=(100, 5))).drift
        False
        >>> det.test(rng.normal(loc=0.4, size=(100, 5))).drift
        True
    """

    method = "mmd"

    def __init__(
        self,
        reference: Any,
        *,
        alpha: float = 0.05,
        n_permutations: int = 100,
        bandwidth: float | None = None,
        preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
        reduce: str | None = None,
        dim: int = 32,
        seed: int = 0,
    ) -> None:
        if isinstance(n_permutations, bool) or not isinstance(n_permutations, int):
            raise ConfigurationError(f"n_permutations must be an int, not {n_permutations!r}")
        if n_permutations < 1 or 1.0 / (n_permutations + 1) >= alpha:
            raise ConfigurationError(
                f"n_permutations={n_permutations} cannot reach alpha={alpha} (the smallest "
                f"p-value is 1/(n_permutations+1)); use at least {int(1 / alpha)} permutations"
            )
        if bandwidth is not None and not (isinstance(bandwidth, int | float) and bandwidth > 0):
            raise ConfigurationError(f"bandwidth must be positive or None, not {bandwidth!r}")
        self.n_permutations = n_permutations
        super().__init__(
            reference, alpha=alpha, preprocess=preprocess, reduce=reduce, dim=dim, seed=seed
        )
        self.bandwidth_ = (
            float(bandwidth)
            if bandwidth is not None
            else median_bandwidth(self.reference_, seed=self.seed)
        )
        with torch.no_grad():
            self._k_rr = gaussian_kernel(self.reference_, self.reference_, self.bandwidth_)
        self._rng = torch.Generator().manual_seed(self.seed)
        self._lock = threading.Lock()

    def _indicators(self, n: int, m: int) -> torch.Tensor:
        """``(P+1, n+m)`` 0/1 rows marking the pseudo-reference; row 0 is the real split."""
        size = n + m
        with self._lock:
            keys = torch.rand(self.n_permutations, size, generator=self._rng)
        # the m smallest keys of a row pick its pseudo-batch: a uniform random relabelling
        batch_idx = keys.topk(m, dim=1, largest=False, sorted=False).indices
        a = torch.ones(self.n_permutations + 1, size)
        a[0, n:] = 0.0
        a[1:].scatter_(1, batch_idx, 0.0)
        return a

    def _test(self, batch: Any) -> DriftResult:
        x = self._features(batch)
        n, m = self.n_reference, int(x.shape[0])
        if m < 2:
            raise InputError("MMDDrift needs a batch of at least 2 samples")
        with torch.no_grad():
            k_rb = gaussian_kernel(self.reference_, x, self.bandwidth_)
            k_bb = gaussian_kernel(x, x, self.bandwidth_)
            a = self._indicators(n, m)
            a_r, a_b = a[:, :n], a[:, n:]
            # rows of A·K, computed block-wise so the (n+m)² matrix is never assembled
            ak = torch.cat([a_r @ self._k_rr + a_b @ k_rb.T, a_r @ k_rb + a_b @ k_bb], dim=1)
            f64 = torch.float64
            s_xx = (ak * a).sum(1, dtype=f64)  # within pseudo-reference
            s_all = ak.sum(1, dtype=f64)  # pseudo-reference against everything
            total = float(self._k_rr.double().sum() + 2 * k_rb.double().sum() + k_bb.double().sum())
            s_xy = s_all - s_xx
            s_yy = total - s_xx - 2 * s_xy
            diag = torch.cat([self._k_rr.diagonal(), k_bb.diagonal()]).double()
            d_x = a.double() @ diag
            d_y = float(diag.sum()) - d_x
            mmd2 = (
                (s_xx - d_x) / (n * (n - 1))
                + (s_yy - d_y) / (m * (m - 1))
                - 2.0 * s_xy / (n * m)
            )
        observed = float(mmd2[0])
        null = mmd2[1:]
        p_value = float((1 + int((null >= observed).sum())) / (1 + self.n_permutations))
        return DriftResult(
            drift=p_value < self.alpha,
            p_value=p_value,
            statistic=observed,
            threshold=self.alpha,
            method=self.method,
            details={
                "n_reference": n,
                "n_batch": m,
                "n_features": self.n_features,
                "bandwidth": self.bandwidth_,
                "n_permutations": self.n_permutations,
                "null_quantile_95": float(torch.quantile(null, 0.95)),
            },
        )
