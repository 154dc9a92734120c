"""Population stability index drift test (re-exported by :mod:`bastion.monitor.drift`)."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bastion.data.contracts._stats import _PSI_FLOOR
from bastion.errors import ConfigurationError
from bastion.monitor._drift_common import (
    MAX_LISTED,
    DriftResult,
    NumericDetector,
    check_alpha,
    sorted_features,
)

__all__ = ["PSIDrift"]


def _quantile_edges(s: torch.Tensor, bins: int) -> torch.Tensor:
    """Inner quantile edges ``(d, bins-1)`` of sorted features ``s`` ``(d, n)`` (linear rule)."""
    n = s.shape[1]
    pos = torch.arange(1, bins, dtype=torch.float64) / bins * (n - 1)
    lo = pos.floor().long()
    hi = torch.clamp(lo + 1, max=n - 1)
    frac = (pos - lo).float()
    return (s[:, lo] + frac * (s[:, hi] - s[:, lo])).contiguous()


def _shares(s: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Share of sorted features ``s`` ``(d, n)`` in each bin ``(e_{k-1}, e_k]``, ``(d, bins)``."""
    n = s.shape[1]
    below = torch.searchsorted(s, edges, right=True).double()  # values <= each edge
    zero = torch.zeros(s.shape[0], 1, dtype=torch.float64)
    full = torch.full((s.shape[0], 1), float(n), dtype=torch.float64)
    return torch.diff(torch.cat([zero, below, full], dim=1), dim=1) / n


def _psi_per_feature(expected: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
    # the formula and floor of bastion.data.contracts._stats._psi, vectorised over features
    e = expected.clamp_min(_PSI_FLOOR)
    a = actual.clamp_min(_PSI_FLOOR)
    return ((a - e) * torch.log(a / e)).sum(dim=1)


class PSIDrift(NumericDetector):
    """Population stability index per feature, with a threshold calibrated on the reference.

    Each feature is cut at the reference's ``bins``-quantiles; the PSI
    ``Σ (a − e)·ln(a/e)`` compares the batch's shares ``a`` with the reference's ``e``; the
    statistic is the largest PSI over features. PSI grows with sampling noise as batches shrink,
    so instead of a fixed rule of thumb (0.1/0.2) the threshold is the ``1 − alpha`` quantile
    of the same statistic on ``n_calibration`` random splits of the reference into a
    pseudo-reference (``n − m`` samples, its own quantile bins) and a pseudo-batch of the batch
    size ``m`` (sampled with replacement when ``m > n/2``). It is computed once per batch size
    (:meth:`calibrate`, or lazily) and cached. ``p_value`` is ``None``; ``details`` carries the
    empirical calibration p-value. Pass ``threshold`` to use a fixed PSI instead.

    Args:
        reference: array or tensor ``(n, ...)``.
        alpha: false-alarm rate per tested batch (default 0.05); needs
            ``n_calibration·alpha >= 1``.
        bins: quantile bins per feature (default 10, deciles).
        n_calibration: reference splits for the threshold (default 200).
        threshold: a fixed PSI threshold (skips calibration), or ``None``.
        preprocess, reduce, dim, seed: feature preparation, see the module docstring.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> det = PSIDrift(rng.normal(size=(2000, 4)), alpha=0.01)
        >>> det.test(rng.normal(size=(300, 4))).drift
        False
        >>> det.test(rng.normal(scale=1.5, size=(300, 4))).drift
        True
    """

    method = "psi"

    def __init__(
        self,
        reference: Any,
        *,
        alpha: float = 0.05,
        bins: int = 10,
        n_calibration: int = 200,
        threshold: float | None = None,
        preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
        reduce: str | None = None,
        dim: int = 32,
        seed: int = 0,
    ) -> None:
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
            raise ConfigurationError(f"bins must be an int >= 2, not {bins!r}")
        if isinstance(n_calibration, bool) or not isinstance(n_calibration, int):
            raise ConfigurationError(f"n_calibration must be an int, not {n_calibration!r}")
        if threshold is not None and not (isinstance(threshold, int | float) and threshold > 0):
            raise ConfigurationError(f"threshold must be a positive number or None: {threshold!r}")
        alpha = check_alpha(alpha)
        if threshold is None and n_calibration * alpha < 1:
            raise ConfigurationError(
                f"n_calibration={n_calibration} splits cannot calibrate alpha={alpha}: "
                f"use n_calibration >= {math.ceil(1 / alpha)}"
            )
        self.bins = bins
        self.n_calibration = n_calibration
        self.fixed_threshold = None if threshold is None else float(threshold)
        super().__init__(
            reference, alpha=alpha, preprocess=preprocess, reduce=reduce, dim=dim, seed=seed
        )
        ref_sorted = sorted_features(self.reference_)
        self._edges = _quantile_edges(ref_sorted, bins)
        self._ref_share = _shares(ref_sorted, self._edges)
        self._null: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def calibrate(self, batch_size: int) -> None:
        """Compute (and cache) the null distribution of the statistic for ``batch_size``."""
        if self.fixed_threshold is not None or batch_size in self._null:
            return
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be positive, not {batch_size}")
        ref, n, m = self.reference_, self.n_reference, batch_size
        g = torch.Generator().manual_seed(self.seed + 7919 * m)
        null = np.empty(self.n_calibration)
        for i in range(self.n_calibration):
            if 2 * m <= n:
                perm = torch.randperm(n, generator=g)
                pseudo_ref, pseudo_batch = ref[perm[m:]], ref[perm[:m]]
            else:
                pseudo_ref = ref
                pseudo_batch = ref[torch.randint(n, (m,), generator=g)]
            ref_s, batch_s = sorted_features(pseudo_ref), sorted_features(pseudo_batch)
            edges = _quantile_edges(ref_s, self.bins)
            psi = _psi_per_feature(_shares(ref_s, edges), _shares(batch_s, edges))
            null[i] = float(psi.max())
        with self._lock:
            self._null[m] = np.sort(null)

    def threshold_for(self, batch_size: int) -> float:
        """The PSI threshold used for batches of ``batch_size`` samples."""
        if self.fixed_threshold is not None:
            return self.fixed_threshold
        self.calibrate(batch_size)
        return float(np.quantile(self._null[batch_size], 1.0 - self.alpha, method="higher"))

    def _test(self, batch: Any) -> DriftResult:
        x = self._features(batch)
        m = int(x.shape[0])
        psi = _psi_per_feature(self._ref_share, _shares(sorted_features(x), self._edges)).numpy()
        stat = float(psi.max())
        threshold = self.threshold_for(m)
        details: dict[str, Any] = {
            "n_reference": self.n_reference,
            "n_batch": m,
            "n_features": int(psi.size),
            "drifted_features": [int(i) for i in np.argsort(-psi)[:MAX_LISTED]
                                 if psi[i] > threshold],
        }
        if self.fixed_threshold is None:
            null = self._null[m]
            details["calibration_p"] = float((1 + (null >= stat).sum()) / (1 + null.size))
        return DriftResult(
            drift=stat > threshold,
            p_value=None,
            statistic=stat,
            threshold=threshold,
            method=self.method,
            details=details,
        )
