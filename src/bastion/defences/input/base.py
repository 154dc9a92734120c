"""The two shapes of input defence: detectors that flag inputs, and preprocessors that purify them.

**Detectors** (:class:`InputDetector`) follow scikit-learn: :meth:`~InputDetector.fit` learns
from clean reference data where the method needs it, :meth:`~InputDetector.score` returns one
suspicion score per input (higher = more suspicious), :meth:`~InputDetector.calibrate` sets
``threshold_`` from known-clean inputs for a target false-positive rate, and
:meth:`~InputDetector.predict` flags ``score > threshold_``. Fitted attributes end in ``_``.

The threshold is a *conformal* order statistic: with ``n`` clean calibration scores it is the
``ceil((n + 1)(1 - fpr))``-th smallest, so that a fresh clean input (exchangeable with the
calibration set) is flagged with probability at most ``fpr``. The plain empirical quantile
would exceed the target by about ``1/n`` on average; this one does not.

**Preprocessors** (:class:`Preprocessor`) expose a pure ``transform(x)``;
:class:`PreprocessedClassifier` puts one in front of a classifier and is itself a bastion
:class:`~bastion.models.base.Classifier`, so every attack runs against the defended model
unchanged. Whether that attack is *meaningful* is another matter: a rounding transform has a
zero gradient almost everywhere and makes gradient attacks fail without adding robustness.
:mod:`bastion.defences.input.adaptive` evaluates such defences with BPDA and EOT.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import ClassVar, Self

import torch

from bastion._params import ParamsRepr
from bastion.errors import ConfigurationError, InputError
from bastion.models.base import BaseClassifier, Classifier, unmetered

__all__ = [
    "InputDetector",
    "PreprocessedClassifier",
    "Preprocessor",
    "check_batch",
    "conformal_threshold",
]


def check_batch(x: object, name: str = "x") -> torch.Tensor:
    """Return ``x`` if it is a non-empty floating-point batch ``(n, ...)``; else raise."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor batch, got {type(x).__name__}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise InputError(f"{name} must be a non-empty batch (n, ...), got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise InputError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if bool(torch.isnan(x).any()):
        raise InputError(f"{name} contains NaN values")
    return x


def check_fpr(fpr: object) -> float:
    if isinstance(fpr, bool) or not isinstance(fpr, int | float) or not 0 < fpr < 1:
        raise ConfigurationError(f"fpr must be a number in (0, 1), got {fpr!r}")
    return float(fpr)


def conformal_threshold(scores: torch.Tensor, fpr: float) -> float:
    """The ``ceil((n + 1)(1 - fpr))``-th smallest of ``n`` clean scores.

    A new clean input whose score is exchangeable with ``scores`` exceeds it with probability
    at most ``fpr`` (Vovk et al.'s split-conformal bound). Needs ``n >= (1 - fpr) / fpr``.

    Example
    -------
    >>> import torch
    >>> conformal_threshold(torch.arange(1.0, 20.0), 0.1)  # n = 19: the 18th smallest
    18.0
    """
    fpr = check_fpr(fpr)
    s = scores.detach().double().flatten().sort().values
    n = s.numel()
    k = math.ceil((n + 1) * (1 - fpr) - 1e-9)
    if k > n:
        need = math.ceil((1 - fpr) / fpr - 1e-9)
        raise InputError(
            f"calibrating to fpr={fpr:g} needs at least {need} clean samples, got {n}; "
            "give more clean data or a larger fpr"
        )
    return float(s[k - 1])


class InputDetector(ParamsRepr, ABC):
    """Base class of adversarial-input and out-of-distribution detectors.

    Subclasses implement :meth:`_score` (differentiable in ``x`` where the method allows, so
    that adaptive attacks can descend it) and, when they learn from data, :meth:`_fit`.
    """

    name: ClassVar[str] = "detector"
    #: whether :meth:`fit` must run before :meth:`score`
    needs_fit: ClassVar[bool] = True
    #: whether :meth:`fit` needs labels
    needs_labels: ClassVar[bool] = False

    threshold_: float
    score_scale_: float

    def __init__(self, *, batch_size: int = 256) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigurationError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size

    # -- public contract ------------------------------------------------------------------
    def fit(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Self:
        """Learn from clean reference inputs ``x`` (and labels ``y`` where needed)."""
        x = check_batch(x)
        if y is None and self.needs_labels:
            raise InputError(f"{type(self).__name__}.fit needs the labels y of the clean data")
        if y is not None:
            if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.dtype.is_floating_point:
                raise InputError("y must be a 1-d integer tensor of labels")
            if y.shape[0] != x.shape[0]:
                raise InputError(f"y has {y.shape[0]} labels for {x.shape[0]} inputs")
            y = y.long()
        self._fit(x, y)
        self.fitted_ = True
        return self

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Suspicion scores ``(n,)``, higher = more suspicious (detached, on ``x``'s device)."""
        self._check_fitted()
        x = check_batch(x)
        with torch.no_grad():
            out = [
                self._score(x[i : i + self.batch_size]).detach()
                for i in range(0, x.shape[0], self.batch_size)
            ]
        return torch.cat(out).to(x.device)

    def differentiable_score(self, x: torch.Tensor) -> torch.Tensor:
        """The score with its graph kept, for adaptive attacks (one batch, no checks).

        Non-differentiable steps inside the score are replaced by their straight-through
        (BPDA) approximation: the value is exact, the gradient an approximation.
        """
        self._check_fitted()
        with torch.enable_grad():
            return self._score(x, differentiable=True)

    def calibrate(self, x_clean: torch.Tensor, *, fpr: float = 0.05) -> Self:
        """Set ``threshold_`` so that a fresh clean input is flagged with probability <= fpr.

        Use clean inputs that were *not* used by :meth:`fit` (a held-out split); the threshold
        is the conformal order statistic of :func:`conformal_threshold`.
        """
        fpr = check_fpr(fpr)
        scores = self.score(x_clean)
        self.threshold_ = conformal_threshold(scores, fpr)
        self.calibration_fpr_ = fpr
        self.n_calibration_ = int(scores.numel())
        spread = float(scores.double().std()) if scores.numel() > 1 else 0.0
        self.score_scale_ = spread if math.isfinite(spread) and spread > 0 else 1.0
        return self

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean mask of flagged inputs: ``score(x) > threshold_``."""
        if not hasattr(self, "threshold_"):
            raise ConfigurationError(
                f"{type(self).__name__} has no threshold: call calibrate(x_clean, fpr=...) first"
            )
        return self.score(x) > self.threshold_

    # -- for subclasses -------------------------------------------------------------------
    def _fit(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        """Learn the detector's state (nothing by default)."""
        return None

    @abstractmethod
    def _score(self, x: torch.Tensor, *, differentiable: bool = False) -> torch.Tensor:
        """Scores of one batch; with ``differentiable=True`` keep the graph (BPDA where needed)."""

    def _check_fitted(self) -> None:
        if self.needs_fit and not getattr(self, "fitted_", False):
            raise ConfigurationError(f"{type(self).__name__} is not fitted: call fit(x) first")



class Preprocessor(ParamsRepr, ABC):
    """An input transformation applied before the classifier (purification).

    ``differentiable`` says whether autograd through :meth:`transform` yields a useful gradient
    (False for rounding and quantisation, whose gradient is zero almost everywhere);
    ``randomised`` whether each call draws fresh randomness from ``generator``.
    """

    name: ClassVar[str] = "preprocessor"
    differentiable: ClassVar[bool] = True
    randomised: ClassVar[bool] = False

    def transform(
        self, x: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The transformed batch, same shape and dtype as ``x``."""
        return self._transform(check_batch(x), generator)

    def __call__(
        self, x: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return self.transform(x, generator=generator)

    @abstractmethod
    def _transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor: ...



class PreprocessedClassifier(BaseClassifier):
    """``classifier`` behind ``transform``: a bastion classifier for the defended model.

    ``logits(x)`` is ``classifier.logits(transform(x))``, differentiable exactly as far as the
    transform is (a naive gradient attack sees the transform's own autograd gradient). A
    randomised transform draws from a generator seeded with ``seed``. Queries are counted here;
    the inner classifier is queried without metering.

    Example
    -------
    >>> import torch
    >>> from torch import nn
    >>> from bastion.models import TorchClassifier
    >>> from bastion.defences.input import BitDepth, PreprocessedClassifier
    >>> clf = TorchClassifier(nn.Flatten(), input_shape=(1, 2, 2), num_classes=4)
    >>> defended = PreprocessedClassifier(clf, BitDepth(bits=1))
    >>> defended.logits(torch.tensor([[[[0.2, 0.7], [0.4, 0.9]]]])).tolist()
    [[0.0, 1.0, 0.0, 1.0]]
    """

    def __init__(
        self,
        classifier: Classifier,
        transform: Preprocessor,
        *,
        seed: int | None = 0,
        query_budget: int | None = None,
    ) -> None:
        if not isinstance(classifier, Classifier):
            raise ConfigurationError(
                f"classifier must be a bastion Classifier, got {type(classifier).__name__}"
            )
        if not isinstance(transform, Preprocessor):
            raise ConfigurationError(
                f"transform must be a Preprocessor, got {type(transform).__name__}"
            )
        super().__init__(
            input_shape=classifier.input_shape,
            num_classes=classifier.num_classes,
            bounds=classifier.bounds,
            capabilities=classifier.capabilities,
            query_budget=query_budget,
        )
        self.classifier = classifier
        self.transform = transform
        self._generator = torch.Generator(device=classifier.device)
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(int(seed))

    @property
    def device(self) -> torch.device:
        return self.classifier.device

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        xt = self.transform.transform(x.to(self.device), generator=self._generator)
        with unmetered(self.classifier):
            return self.classifier.logits(xt)

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        xt = self.transform.transform(x.to(self.device), generator=self._generator)
        with unmetered(self.classifier):
            return self.classifier.predict(xt)

    @contextlib.contextmanager
    def evaluation(self) -> Iterator[None]:
        with self.classifier.evaluation():
            yield

    def __repr__(self) -> str:
        return f"PreprocessedClassifier({self.classifier!r}, {self.transform!r})"
