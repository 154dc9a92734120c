"""Input handling and feature reduction shared by the drift detectors.

Every detector takes arrays or tensors of shape ``(n, ...)`` and works on a float32 matrix of
shape ``(n, features)``: trailing dimensions are flattened (an MNIST batch ``(n, 1, 28, 28)``
becomes ``(n, 784)``). Images have many, strongly correlated features; a reduction fitted once
on the reference shrinks them to ``dim`` features before testing:

``"pca"``
    projection on the reference's top ``dim`` principal components (centred with the reference
    mean). Deterministic; keeps the directions along which the reference varies most, which is
    where brightness, noise and class-mix shifts show up.
``"random"``
    a fixed Gaussian random projection ``R`` of shape ``(features, dim)`` scaled by
    ``1/sqrt(dim)``, drawn from ``seed``. Cheaper to fit and blind to the reference, so it
    also sees shifts along directions the reference hardly uses.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from bastion.data.contracts._stats import benjamini_hochberg
from bastion.errors import ConfigurationError, InputError

REDUCTIONS = ("pca", "random")


def as_tensor(x: Any, *, name: str = "batch") -> torch.Tensor:
    """``x`` (array or tensor, shape ``(n, ...)``) as a finite float32 CPU tensor, same shape."""
    if isinstance(x, torch.Tensor):
        t = x.detach().to(device="cpu", dtype=torch.float32)
    else:
        try:
            arr = np.asarray(x, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{name} must be numeric (an array or tensor): {exc}") from exc
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.ndim == 0:
        raise InputError(f"{name} must have shape (n, ...); got a scalar")
    if t.shape[0] == 0:
        raise InputError(f"{name} is empty; pass at least one sample")
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{name} contains NaN or infinite values; clean or validate it first")
    return t


def sorted_features(x: torch.Tensor) -> torch.Tensor:
    """Each feature of ``x`` ``(n, d)`` sorted, as a contiguous ``(d, n)`` tensor.

    numpy's vectorised sort is several times faster than torch's on CPU; the round trip
    shares memory.
    """
    arr = np.ascontiguousarray(x.detach().numpy().T)
    arr.sort(axis=1)
    return torch.from_numpy(arr)


class Reduction:
    """A linear map ``x -> (x - centre) @ matrix`` fitted on the reference."""

    def __init__(self, kind: str, centre: torch.Tensor, matrix: torch.Tensor) -> None:
        self.kind = kind
        self.centre = centre
        self.matrix = matrix

    @property
    def dim(self) -> int:
        """Number of output features."""
        return int(self.matrix.shape[1])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.centre) @ self.matrix

    def __repr__(self) -> str:
        return f"Reduction({self.kind!r}, {self.matrix.shape[0]} -> {self.dim})"


def fit_reduction(reference: torch.Tensor, kind: str, dim: int, seed: int) -> Reduction:
    """Fit a ``"pca"`` or ``"random"`` reduction of ``reference`` ``(n, d)`` to ``dim`` features."""
    d = int(reference.shape[1])
    if dim >= d:
        raise ConfigurationError(
            f"dim={dim} does not reduce {d} features; pick dim < {d} or reduce=None"
        )
    if kind == "random":
        g = torch.Generator().manual_seed(seed)
        r = torch.randn(d, dim, generator=g, dtype=torch.float32) / float(np.sqrt(dim))
        return Reduction(kind, torch.zeros(d), r)
    centre = reference.mean(dim=0)
    xc = (reference - centre).double()
    cov = xc.T @ xc / max(reference.shape[0] - 1, 1)
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    top = vecs[:, -dim:].flip(1)
    # a fixed sign per component keeps the map deterministic across platforms
    signs = torch.sign(top[top.abs().argmax(dim=0), torch.arange(dim)])
    signs[signs == 0] = 1.0
    return Reduction(kind, centre, (top * signs).float())


def check_reduction(reduce: str | None, dim: int) -> None:
    """Validate the ``reduce``/``dim`` constructor arguments."""
    if reduce is not None and reduce not in REDUCTIONS:
        raise ConfigurationError(f"reduce must be one of {REDUCTIONS} or None, not {reduce!r}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ConfigurationError(f"dim must be a positive int, not {dim!r}")


def check_alpha(alpha: float) -> float:
    """Validate a significance level / false-alarm rate."""
    if not isinstance(alpha, int | float) or not 0.0 < float(alpha) < 1.0:
        raise ConfigurationError(f"alpha must be in (0, 1), not {alpha!r}")
    return float(alpha)


CORRECTIONS = ("bonferroni", "fdr")
MAX_LISTED = 20  # features named in ``details``


@dataclass(frozen=True)
class DriftResult:
    """The outcome of one drift test.

    ``drift`` is ``p_value < threshold`` when ``p_value`` is set, else ``statistic > threshold``.
    ``details`` holds JSON-friendly extras (sizes, drifted feature indices, ...).
    """

    drift: bool
    p_value: float | None
    statistic: float
    threshold: float
    method: str
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {
            "drift": self.drift,
            "p_value": self.p_value,
            "statistic": self.statistic,
            "threshold": self.threshold,
            "method": self.method,
            "details": dict(self.details),
        }


class DriftDetector(ABC):
    """Base class: a two-sample test of a batch against reference data kept at construction."""

    method: ClassVar[str]

    @property
    @abstractmethod
    def n_reference(self) -> int:
        """Number of reference samples."""

    def __repr__(self) -> str:
        alpha = getattr(self, "alpha", None)
        return f"{type(self).__name__}(n_reference={self.n_reference}, alpha={alpha})"

    def calibrate(self, batch_size: int) -> None:  # noqa: B027 - optional hook
        """Prepare for batches of ``batch_size`` samples (no-op unless a detector needs it)."""

    def test(self, batch: Any) -> DriftResult:
        """Test ``batch`` (shape ``(m, ...)``) against the reference."""
        return self._test(batch)

    @abstractmethod
    def _test(self, batch: Any) -> DriftResult: ...


class NumericDetector(DriftDetector):
    """Shared set-up of the detectors on numeric features."""

    def __init__(
        self,
        reference: Any,
        *,
        alpha: float,
        preprocess: Callable[[torch.Tensor], torch.Tensor] | None,
        reduce: str | None,
        dim: int,
        seed: int,
    ) -> None:
        self.alpha = check_alpha(alpha)
        check_reduction(reduce, dim)
        if preprocess is not None and not callable(preprocess):
            raise ConfigurationError("preprocess must be a callable on tensors or None")
        self.preprocess = preprocess
        self.seed = int(seed)
        self._input_shape: tuple[int, ...] | None = None
        ref = self._features(reference, name="reference", fitting=True)
        if ref.shape[0] < 2:
            raise InputError("reference needs at least 2 samples")
        self.reduction_: Reduction | None = (
            fit_reduction(ref, reduce, dim, self.seed) if reduce is not None else None
        )
        self.reference_ = self.reduction_(ref) if self.reduction_ is not None else ref

    @property
    def n_reference(self) -> int:
        return int(self.reference_.shape[0])

    @property
    def n_features(self) -> int:
        """Number of features tested (after preprocessing and reduction)."""
        return int(self.reference_.shape[1])

    def _features(self, x: Any, *, name: str = "batch", fitting: bool = False) -> torch.Tensor:
        t = as_tensor(x, name=name)
        shape = tuple(t.shape[1:])
        if fitting:
            self._input_shape = shape
        elif shape != self._input_shape and math.prod(shape) != math.prod(self._input_shape or ()):
            raise InputError(
                f"{name} samples have shape {shape}, the reference's {self._input_shape}"
            )
        if self.preprocess is not None:  # on the samples as given, e.g. images for a CNN
            with torch.no_grad():
                t = as_tensor(self.preprocess(t), name=f"preprocess({name})")
        t = t.reshape(t.shape[0], -1) if t.ndim > 1 else t.reshape(-1, 1)
        if not fitting:
            if self.reduction_ is not None:
                if t.shape[1] != self.reduction_.matrix.shape[0]:
                    raise InputError(
                        f"{name} has {t.shape[1]} features, the reference "
                        f"{self.reduction_.matrix.shape[0]}"
                    )
                t = self.reduction_(t)
            elif t.shape[1] != self.reference_.shape[1]:
                raise InputError(
                    f"{name} has {t.shape[1]} features, the reference {self.reference_.shape[1]}"
                )
        return t


def correct(p: np.ndarray, correction: str) -> np.ndarray:
    """Per-feature p-values adjusted for the number of features."""
    if correction == "bonferroni":
        return np.minimum(p * p.size, 1.0)
    return benjamini_hochberg(p.tolist())


def check_correction(correction: str) -> str:
    if correction not in CORRECTIONS:
        raise ConfigurationError(f"correction must be one of {CORRECTIONS}, not {correction!r}")
    return correction


def listed(adjusted: np.ndarray, alpha: float) -> list[int]:
    idx = np.flatnonzero(adjusted < alpha)
    return [int(i) for i in idx[np.argsort(adjusted[idx], kind="stable")][:MAX_LISTED]]


