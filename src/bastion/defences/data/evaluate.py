"""Ground-truth evaluation of poison detectors: precision, recall and F1 per method."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from bastion.errors import InputError

__all__ = ["DetectionScore", "detection_score", "evaluate_detectors"]


@dataclass(frozen=True)
class DetectionScore:
    """Confusion counts of flagged vs truly poisoned samples, and the derived rates.

    Precision is 1.0 when nothing is flagged (no false alarm); recall is 1.0 when nothing is
    poisoned.

    Example
    -------
    >>> import torch
    >>> s = detection_score(torch.tensor([1, 1, 0, 0]).bool(), torch.tensor([1, 0, 1, 0]).bool())
    >>> s.precision, s.recall, s.f1
    (0.5, 0.5, 0.5)
    """

    method: str
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def flagged(self) -> int:
        return self.tp + self.fp

    @property
    def precision(self) -> float:
        return self.tp / self.flagged if self.flagged else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(flagged=self.flagged, precision=self.precision, recall=self.recall, f1=self.f1)
        return out


def detection_score(flags: torch.Tensor, mask: torch.Tensor, *, method: str = "") -> DetectionScore:
    """Score boolean ``flags`` against the ground-truth poison ``mask``."""
    if not isinstance(flags, torch.Tensor) or not isinstance(mask, torch.Tensor):
        raise InputError("flags and mask must be tensors")
    if flags.shape != mask.shape or flags.dim() != 1:
        raise InputError(
            f"flags {tuple(flags.shape)} and mask {tuple(mask.shape)} must be equal 1-d shapes"
        )
    f, m = flags.bool().cpu(), mask.bool().cpu()
    return DetectionScore(
        method=method,
        tp=int((f & m).sum()),
        fp=int((f & ~m).sum()),
        fn=int((~f & m).sum()),
        tn=int((~f & ~m).sum()),
    )


def evaluate_detectors(
    flags: Mapping[str, torch.Tensor], mask: torch.Tensor
) -> dict[str, DetectionScore]:
    """:func:`detection_score` for each ``{method: flags}``."""
    return {name: detection_score(f, mask, method=name) for name, f in flags.items()}
