"""Model performance from delayed labels: predictions joined to ground truth by request id.

A served model's predictions are recorded under the request id; ground truth arrives later
(minutes to weeks) and is joined to them. Every ``window`` labelled predictions, the window's
accuracy is compared with the accuracy measured at validation time: the window is *degraded*
when ``accuracy < baseline_accuracy - tolerance``. A one-sided exact binomial p-value (is the
window's accuracy below the baseline?) is reported alongside, to tell noise from decay.

State is in-process and bounded: at most ``max_pending`` unlabelled predictions are kept; the
oldest are dropped (and counted in :attr:`PerformanceMonitor.evicted`) when more arrive.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats

from bastion.errors import ConfigurationError, InputError

__all__ = ["PerformanceMonitor", "PerformanceResult"]


@dataclass(frozen=True)
class PerformanceResult:
    """Accuracy over one window of labelled predictions.

    ``degraded`` is ``accuracy < baseline_accuracy - tolerance``; ``p_value`` is the exact
    one-sided binomial probability of an accuracy this low if the model still had
    ``baseline_accuracy``.
    """

    window_index: int
    n: int
    correct: int
    accuracy: float
    baseline_accuracy: float
    tolerance: float
    degraded: bool
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {
            "window_index": self.window_index,
            "n": self.n,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "baseline_accuracy": self.baseline_accuracy,
            "tolerance": self.tolerance,
            "degraded": self.degraded,
            "p_value": self.p_value,
        }


def _labels(value: Any, name: str) -> list[Hashable]:
    """One label or a 1-D sequence of labels as plain Python values."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.ndim > 1:
            raise InputError(f"{name} must be a label or a 1-D sequence of labels")
        return list(value.reshape(-1).tolist())
    if isinstance(value, list | tuple):
        out = [v.item() if isinstance(v, np.generic) else v for v in value]
    else:
        out = [value.item() if isinstance(value, np.generic) else value]
    for v in out:
        if not isinstance(v, Hashable) or isinstance(v, list | tuple | dict):
            raise InputError(f"{name} must hold scalar labels (int or str), not {v!r}")
    return out


class PerformanceMonitor:
    """Windowed accuracy of a served model as delayed labels arrive.

    :meth:`record` stores a request's prediction (one label, or several for a batch request);
    :meth:`label` joins the ground truth to it and returns a :class:`PerformanceResult` when a
    window of ``window`` labelled predictions completes. Thread-safe.

    Args:
        window: labelled predictions per window.
        baseline_accuracy: accuracy measured at validation, in ``(0, 1]``.
        tolerance: accepted drop below the baseline before a window counts as degraded.
        max_pending: predictions kept while waiting for labels (oldest dropped first).

    Example:
        >>> mon = PerformanceMonitor(window=4, baseline_accuracy=0.9, tolerance=0.1)
        >>> for i, pred in enumerate([1, 2, 3, 4]):
        ...     mon.record(f"req-{i}", pred)
        >>> [mon.label(f"req-{i}", truth) for i, truth in enumerate([1, 2, 0, 0])][:3]
        [None, None, None]
        >>> mon.last.accuracy, mon.last.degraded
        (0.5, True)
    """

    def __init__(
        self,
        *,
        window: int,
        baseline_accuracy: float,
        tolerance: float,
        max_pending: int = 100_000,
        max_history: int = 1000,
    ) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ConfigurationError(f"window must be a positive int, not {window!r}")
        if not isinstance(baseline_accuracy, int | float) or not 0.0 < baseline_accuracy <= 1.0:
            raise ConfigurationError(
                f"baseline_accuracy must be in (0, 1], not {baseline_accuracy!r}"
            )
        if not isinstance(tolerance, int | float) or not 0.0 <= tolerance < baseline_accuracy:
            raise ConfigurationError(
                f"tolerance must be in [0, baseline_accuracy={baseline_accuracy}), "
                f"not {tolerance!r}"
            )
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise ConfigurationError(f"max_pending must be a positive int, not {max_pending!r}")
        self.window = window
        self.baseline_accuracy = float(baseline_accuracy)
        self.tolerance = float(tolerance)
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._pending: OrderedDict[str, list[Hashable]] = OrderedDict()
        self._hits = 0
        self._seen = 0
        self._windows = 0
        self.evicted = 0
        self._history: deque[PerformanceResult] = deque(maxlen=max(max_history, 1))

    @property
    def pending(self) -> int:
        """Requests recorded and not yet labelled."""
        return len(self._pending)

    @property
    def last(self) -> PerformanceResult | None:
        """The latest completed window, if any."""
        with self._lock:
            return self._history[-1] if self._history else None

    @property
    def history(self) -> tuple[PerformanceResult, ...]:
        """The latest completed windows, oldest first."""
        with self._lock:
            return tuple(self._history)

    def record(self, request_id: str, predicted: Any) -> None:
        """Store the prediction(s) of ``request_id`` until its label arrives."""
        key = self._key(request_id)
        preds = _labels(predicted, "predicted")
        if not preds:
            raise InputError("predicted is empty")
        with self._lock:
            if key in self._pending:
                raise InputError(f"request id {key!r} was already recorded; ids must be unique")
            self._pending[key] = preds
            while len(self._pending) > self.max_pending:
                self._pending.popitem(last=False)
                self.evicted += 1

    def label(self, request_id: str, true_label: Any) -> PerformanceResult | None:
        """Join the ground truth of ``request_id``; the result of a window it completes, if any.

        Raises:
            InputError: the id is unknown (never recorded, already labelled, or evicted), or
                the number of labels differs from the number of predictions.
        """
        key = self._key(request_id)
        truth = _labels(true_label, "true_label")
        completed: PerformanceResult | None = None
        with self._lock:
            preds = self._pending.get(key)
            if preds is None:
                raise InputError(
                    f"no prediction recorded for request id {key!r} (unknown, already "
                    f"labelled, or dropped after max_pending={self.max_pending})"
                )
            if len(truth) != len(preds):
                raise InputError(
                    f"request {key!r} made {len(preds)} predictions but {len(truth)} labels "
                    f"were given"
                )
            del self._pending[key]
            for p, t in zip(preds, truth, strict=True):
                self._hits += int(p == t)
                self._seen += 1
                if self._seen == self.window:
                    completed = self._close_window()
        return completed

    def _close_window(self) -> PerformanceResult:
        n, k = self._seen, self._hits
        acc = k / n
        p_value = float(stats.binomtest(k, n, self.baseline_accuracy, alternative="less").pvalue)
        result = PerformanceResult(
            window_index=self._windows,
            n=n,
            correct=k,
            accuracy=acc,
            baseline_accuracy=self.baseline_accuracy,
            tolerance=self.tolerance,
            degraded=acc < self.baseline_accuracy - self.tolerance,
            p_value=p_value,
        )
        self._windows += 1
        self._hits = self._seen = 0
        self._history.append(result)
        return result

    @staticmethod
    def _key(request_id: Any) -> str:
        if not isinstance(request_id, str | int) or isinstance(request_id, bool):
            raise InputError(f"request_id must be a str or int, not {request_id!r}")
        key = str(request_id)
        if not key:
            raise InputError("request_id is empty")
        return key
