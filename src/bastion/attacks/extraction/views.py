"""Black-box views of a classifier: what a prediction API would expose of it.

:func:`black_box` wraps any :class:`~bastion.models.Classifier` (a white-box torch model, say)
so that an attack sees only its scores (log-probabilities, no gradient) or only its labels.
The view meters its own queries and honours its own ``query_budget``; the wrapped classifier's
counter and budget apply as well, since every query goes through its ``logits()`` /
``predict()``.

Example
-------
>>> import torch
>>> from torch import nn
>>> from bastion.models import TorchClassifier
>>> from bastion.attacks.extraction import black_box
>>> clf = TorchClassifier(nn.Linear(4, 3), input_shape=(4,), num_classes=3)
>>> view = black_box(clf, access="labels")
>>> view.predict(torch.rand(5, 4)).shape, view.queries, clf.queries
(torch.Size([5]), 5, 5)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch

from bastion.errors import CapabilityError, ConfigurationError
from bastion.models.base import BaseClassifier, Capability, Classifier
from bastion.models.base import unmetered as _unmetered

__all__ = ["BlackBoxView", "black_box"]


class BlackBoxView(BaseClassifier):
    """A score-only or label-only view of ``base`` (see the module docstring)."""

    def __init__(
        self,
        base: Classifier,
        *,
        access: Literal["scores", "labels"] = "scores",
        query_budget: int | None = None,
    ) -> None:
        if access not in ("scores", "labels"):
            raise ConfigurationError(f"access must be 'scores' or 'labels', got {access!r}")
        if access == "scores" and Capability.SCORES not in base.capabilities:
            raise CapabilityError(
                f"{type(base).__name__} is label-only; it cannot be viewed with access='scores'"
            )
        super().__init__(
            input_shape=tuple(base.input_shape),
            num_classes=base.num_classes,
            bounds=base.bounds,
            capabilities=Capability.score_only() if access == "scores" else Capability.LABELS,
            query_budget=query_budget,
        )
        self.base = base
        self.access = access

    @property
    def device(self) -> torch.device:
        return self.base.device

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.access == "labels":
            raise CapabilityError(
                "this classifier is exposed label-only: it offers predict(), not scores"
            )
        return super().logits(x)

    @property
    def score_floor(self) -> float | None:  # type: ignore[override]
        """The wrapped classifier's floor: its clamped scores stay at (or below) it here."""
        return getattr(self.base, "score_floor", None)

    @torch.no_grad()
    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.base.logits(x).detach().float(), dim=1)

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.predict(x)

    @contextlib.contextmanager
    def unmetered(self) -> Iterator[None]:
        with super().unmetered(), _unmetered(self.base):
            yield

    @contextlib.contextmanager
    def evaluation(self) -> Iterator[None]:
        with self.base.evaluation():
            yield

    def __repr__(self) -> str:
        return f"BlackBoxView({self.base!r}, access={self.access!r})"


def black_box(
    classifier: Classifier,
    *,
    access: Literal["scores", "labels"] = "scores",
    query_budget: int | None = None,
) -> BlackBoxView:
    """A score-only (``access="scores"``) or label-only view of ``classifier``."""
    return BlackBoxView(classifier, access=access, query_budget=query_budget)
