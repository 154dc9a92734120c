"""The contract of poisoned-sample detectors, in the scikit-learn style.

Training-set detectors look at labelled data ``(x, y)``: :meth:`fit` learns from it and keeps,
for that same data, per-sample ``scores_`` (higher is more suspicious) and ``flags_`` (the
samples it calls poisoned, ``scores_ > threshold_``). :meth:`score` and :meth:`predict` apply the
fitted state to new samples; :meth:`calibrate` moves ``threshold_`` so that at most ``fpr`` of
known-clean samples are flagged. Fitted attributes end in ``_``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from bastion._params import ParamsRepr
from bastion.errors import ConfigurationError, InputError

__all__ = ["PoisonDetector", "check_xy", "quantile_threshold"]


def check_xy(x: torch.Tensor, y: torch.Tensor | None, *, need_y: bool = True) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] == 0:
        raise InputError("x must be a non-empty batch tensor (n, ...)")
    if y is None:
        if need_y:
            raise InputError("labels y are needed")
        return
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.dtype.is_floating_point:
        raise InputError("y must be a 1-d integer tensor of labels")
    if y.shape[0] != x.shape[0]:
        raise InputError(f"y has {y.shape[0]} labels for {x.shape[0]} inputs")


def check_fpr(fpr: object) -> float:
    if isinstance(fpr, bool) or not isinstance(fpr, int | float) or not 0 < fpr < 1:
        raise ConfigurationError(f"fpr must be in (0, 1), got {fpr!r}")
    return float(fpr)


def quantile_threshold(scores: torch.Tensor, fpr: float) -> float:
    """The smallest threshold ``t`` with ``mean(scores > t) <= fpr``."""
    s = scores.double().sort(descending=True).values
    k = int(fpr * s.numel())  # samples allowed above t
    if k >= s.numel():
        return float(s[-1]) - 1e-12
    return float(s[k])


class PoisonDetector(ParamsRepr, ABC):
    """Base class of training-set poison detectors (see the module docstring)."""

    name: ClassVar[str] = "detector"
    scores_: torch.Tensor
    flags_: torch.Tensor
    threshold_: float

    def fit(self, x: torch.Tensor, y: torch.Tensor) -> PoisonDetector:
        """Analyse the (possibly poisoned) training data; sets ``scores_``, ``flags_``."""
        check_xy(x, y)
        flags = self._fit(x, y.long())
        if not hasattr(self, "threshold_"):
            raise RuntimeError(f"{type(self).__name__}._fit did not set threshold_")
        self.flags_ = self.scores_ > self.threshold_ if flags is None else flags
        return self

    def fit_predict(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """:meth:`fit`, then the boolean mask of flagged training samples."""
        return self.fit(x, y).flags_

    def score(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Suspicion scores of new labelled samples under the fitted state."""
        self._check_fitted()
        check_xy(x, y)
        return self._score(x, y.long())

    def predict(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``score(x, y) > threshold_``."""
        return self.score(x, y) > self.threshold_

    def calibrate(
        self, x_clean: torch.Tensor, y_clean: torch.Tensor, *, fpr: float = 0.05
    ) -> PoisonDetector:
        """Set ``threshold_`` so that at most ``fpr`` of known-clean samples are flagged."""
        fpr = check_fpr(fpr)
        scores = self.score(x_clean, y_clean)
        self.threshold_ = max(self._min_threshold(), quantile_threshold(scores, fpr))
        self.flags_ = self.scores_ > self.threshold_
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "scores_"):
            raise ConfigurationError(f"{type(self).__name__} is not fitted: call fit(x, y) first")

    def _min_threshold(self) -> float:
        return float("-inf")

    @abstractmethod
    def _fit(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """Set ``scores_`` (for the training data) and ``threshold_``; return the flags when
        the method decides them otherwise than by ``scores_ > threshold_`` (else ``None``)."""

    @abstractmethod
    def _score(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...

