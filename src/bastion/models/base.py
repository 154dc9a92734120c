"""The :class:`Classifier` contract every model adapter honours.

An adapter turns a model (a torch module, a scikit-learn estimator, an ONNX session, a remote
endpoint) into one interface that attacks, defences and detectors use:

- ``logits(x)``: a float tensor ``(n, num_classes)`` for a batch ``x`` of shape
  ``(n, *input_shape)``. White-box adapters return differentiable logits; score-only adapters
  return log-probabilities (logits up to a per-row constant, which softmax ignores);
  label-only adapters raise :class:`~bastion.errors.CapabilityError`.
- ``predict(x)``: the predicted labels, offered by every adapter.
- ``num_classes``, ``input_shape``, ``bounds``, ``capabilities``, ``device``.
- a query counter (``queries``) and an optional ``query_budget``: a call that would take the
  count past the budget raises :class:`~bastion.errors.QueryBudgetExceeded` before querying.
- ``evaluation()``: a context manager that puts the model in inference mode and restores its
  previous mode on exit, even when the body raises.
- ``score_floor`` / ``censored(scores)``: adapters that clamp probabilities before taking their
  log (sklearn, ONNX and remote adapters clamp at ``1e-12``) name the log-probability floor, and
  ``censored`` marks the outputs at that floor: for those the model's true score is only known
  to be *at most* the floor, so an attack must not read them as equations.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from enum import Flag, auto
from typing import Protocol, runtime_checkable

import torch

from bastion.errors import ConfigurationError, InputError, QueryBudgetExceeded

__all__ = [
    "BaseClassifier",
    "Capability",
    "Classifier",
    "censored_outputs",
    "check_bounds",
    "check_labels",
    "unmetered",
]


class Capability(Flag):
    """What a classifier offers an attacker."""

    LABELS = auto()
    SCORES = auto()
    GRADIENTS = auto()

    @classmethod
    def white_box(cls) -> Capability:
        return cls.LABELS | cls.SCORES | cls.GRADIENTS

    @classmethod
    def score_only(cls) -> Capability:
        return cls.LABELS | cls.SCORES


@runtime_checkable
class Classifier(Protocol):
    """Structural type of every model adapter (see the module docstring)."""

    @property
    def num_classes(self) -> int: ...

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    @property
    def bounds(self) -> tuple[float, float]: ...

    @property
    def capabilities(self) -> Capability: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def queries(self) -> int: ...

    def logits(self, x: torch.Tensor) -> torch.Tensor: ...

    def predict(self, x: torch.Tensor) -> torch.Tensor: ...

    def evaluation(self) -> contextlib.AbstractContextManager[None]: ...


class BaseClassifier:
    """Shared bookkeeping for adapters: shape checks, the query counter and budget.

    Subclasses implement :meth:`_logits` (and :meth:`_predict` when they are label-only), and
    set :attr:`score_floor` when their scores are clamped.
    """

    #: the log-probability at which this adapter clamps its scores (``None``: never clamped)
    score_floor: float | None = None

    def __init__(
        self,
        *,
        input_shape: tuple[int, ...],
        num_classes: int,
        bounds: tuple[float, float] = (0.0, 1.0),
        capabilities: Capability,
        query_budget: int | None = None,
    ) -> None:
        shape = tuple(int(s) for s in input_shape)
        if not shape or any(s <= 0 for s in shape):
            raise ConfigurationError(
                f"input_shape must be a non-empty tuple of positive sizes, got {input_shape!r}"
            )
        if int(num_classes) < 2:
            raise ConfigurationError(f"num_classes must be at least 2, got {num_classes!r}")
        lo, hi = (float(b) for b in bounds)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ConfigurationError(
                f"bounds must be two finite numbers with low < high, got {bounds!r}"
            )
        if query_budget is not None and int(query_budget) < 0:
            raise ConfigurationError(f"query_budget must be >= 0, got {query_budget!r}")
        self._input_shape = shape
        self._num_classes = int(num_classes)
        self._bounds = (lo, hi)
        self._capabilities = capabilities
        self._queries = 0
        self.query_budget = None if query_budget is None else int(query_budget)

    # -- contract -------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._input_shape

    @property
    def bounds(self) -> tuple[float, float]:
        return self._bounds

    @property
    def capabilities(self) -> Capability:
        return self._capabilities

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def queries(self) -> int:
        """Number of inputs sent to the model so far (each row of a batch counts once)."""
        return self._queries

    def reset_queries(self) -> None:
        self._queries = 0

    @contextlib.contextmanager
    def unmetered(self) -> Iterator[None]:
        """Suspend query counting (for bookkeeping queries that are not the adversary's)."""
        saved, budget = self._queries, self.query_budget
        self.query_budget = None
        try:
            yield
        finally:
            self._queries, self.query_budget = saved, budget

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        self._check_batch(x)
        self._count(x.shape[0])
        return self._logits(x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self._check_batch(x)
        self._count(x.shape[0])
        with torch.no_grad():
            return self._predict(x)

    @contextlib.contextmanager
    def evaluation(self) -> Iterator[None]:
        yield

    def censored(self, scores: torch.Tensor) -> torch.Tensor:
        """Which entries of a ``logits()`` answer are censored (clamped or not finite).

        A censored entry's true log-probability is at most :attr:`score_floor`; its value says
        nothing more. Scores are log-probabilities up to a per-row constant, so the floor is
        compared after normalising each row (with a little slack for float32 rounding: an entry
        just above the floor may be marked censored, never the reverse).
        """
        return _censored(scores, self.score_floor)

    # -- for subclasses -------------------------------------------------------------------
    def _logits(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        return self._logits(x).argmax(dim=1)

    def _count(self, n: int) -> None:
        if self.query_budget is not None and self._queries + n > self.query_budget:
            raise QueryBudgetExceeded(
                f"query budget of {self.query_budget} would be exceeded: {self._queries} used, "
                f"{n} more requested; raise query_budget or query fewer inputs"
            )
        self._queries += n

    def _check_batch(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise InputError(f"expected a torch.Tensor batch, got {type(x).__name__}")
        if tuple(x.shape[1:]) != self._input_shape:
            raise InputError(
                f"expected a batch of shape (n, {', '.join(map(str, self._input_shape))}), "
                f"got {tuple(x.shape)}"
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(input_shape={self._input_shape}, "
            f"num_classes={self._num_classes}, bounds={self._bounds})"
        )


def check_bounds(x: torch.Tensor, bounds: tuple[float, float], *, name: str = "x") -> None:
    """Raise :class:`InputError` when ``x`` has NaNs or values outside ``bounds``."""
    if not torch.is_floating_point(x):
        raise InputError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.numel() == 0:
        return
    if torch.isnan(x).any():
        raise InputError(f"{name} contains NaN values")
    lo, hi = bounds
    tol = 1e-6 * max(1.0, abs(hi - lo))
    xmin, xmax = float(x.min()), float(x.max())
    if xmin < lo - tol or xmax > hi + tol:
        raise InputError(
            f"{name} has values in [{xmin:.4g}, {xmax:.4g}], outside the model's bounds "
            f"[{lo:g}, {hi:g}]; rescale the data or pass the right bounds"
        )


def check_labels(y: torch.Tensor, num_classes: int, n: int, *, name: str = "y") -> None:
    """Raise :class:`InputError` unless ``y`` holds ``n`` integer labels in [0, num_classes)."""
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.dim() != 1:
        raise InputError(
            f"{name} must be a 1-d integer tensor of labels, got {y.dtype} {tuple(y.shape)}"
        )
    if y.shape[0] != n:
        raise InputError(f"{name} has {y.shape[0]} labels for {n} inputs")
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise InputError(
            f"{name} has labels in [{int(y.min())}, {int(y.max())}], "
            f"outside [0, {num_classes - 1}] for a {num_classes}-class model"
        )


def _censored(scores: torch.Tensor, floor: float | None) -> torch.Tensor:
    s = scores.detach().double()
    mask = ~torch.isfinite(s)
    if floor is None or s.numel() == 0:
        return mask
    safe = torch.where(mask, torch.full_like(s, -math.inf), s)
    logp = torch.log_softmax(safe, dim=1)
    slack = 1e-5 * max(1.0, abs(floor))
    return mask | (logp <= floor + slack)


def censored_outputs(classifier: Classifier, scores: torch.Tensor) -> torch.Tensor:
    """``classifier.censored(scores)`` where the adapter offers it, else the non-finite entries."""
    method = getattr(classifier, "censored", None)
    if method is None:
        return _censored(scores, getattr(classifier, "score_floor", None))
    return method(scores)


@contextlib.contextmanager
def unmetered(classifier: Classifier) -> Iterator[None]:
    """Suspend ``classifier``'s query counting where it supports that (bookkeeping queries)."""
    cm = getattr(classifier, "unmetered", None)
    if cm is None:
        yield
    else:
        with cm():
            yield
