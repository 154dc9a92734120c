"""Loss and confidence threshold attacks (Yeom et al. 2018).

Paper: S. Yeom, I. Giacomelli, M. Fredrikson, S. Jha, "Privacy Risk in Machine Learning:
Analyzing the Connection to Overfitting", CSF 2018. https://arxiv.org/abs/1709.01604

A training member tends to have a lower loss than an unseen sample; the attack says "member"
when the loss is below a threshold. The scores here are the negated per-sample signal, so the
ROC sweeps every threshold; the advantage grows with the generalisation gap.

Signals (``signal=``):

- ``"loss"``: ``-CE(f(x), y)``, Yeom's attack (default).
- ``"confidence"``: ``p_y(x)``, the model's probability of the true label.
- ``"max_confidence"``: ``max_j p_j(x)``; needs no label.
- ``"scaled_logit"``: ``log p_y - log(1 - p_y)``, the statistic LiRA models as Gaussian.

Queries: one per sample. Needs scores (white-box or score-only models).

Example
-------
>>> import torch
>>> from torch import nn
>>> from bastion.models import TorchClassifier
>>> from bastion.attacks.inference import ThresholdAttack
>>> torch.manual_seed(0) and None
>>> clf = TorchClassifier(nn.Linear(4, 3), input_shape=(4,), num_classes=3)
>>> x, y = torch.rand(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
>>> res = ThresholdAttack(signal="loss").infer(clf, x, y, membership=torch.arange(6) < 3)
>>> res.scores.shape, res.queries
(torch.Size([6]), 6)
"""

from __future__ import annotations

from typing import ClassVar

import torch

from bastion.attacks.inference._common import (
    log_probs,
    own_log_prob,
    query_logits,
    scaled_logit,
)
from bastion.attacks.inference.base import MembershipAttack
from bastion.errors import ConfigurationError
from bastion.models.base import Capability, Classifier

__all__ = ["SIGNALS", "ThresholdAttack", "signal_from_logits"]

SIGNALS = ("loss", "confidence", "max_confidence", "scaled_logit")


def signal_from_logits(logits: torch.Tensor, y: torch.Tensor, signal: str) -> torch.Tensor:
    """The per-sample membership signal (higher = member) of one of :data:`SIGNALS`."""
    if signal == "loss":
        return own_log_prob(logits, y)
    if signal == "confidence":
        return own_log_prob(logits, y).exp()
    if signal == "max_confidence":
        return log_probs(logits).max(1).values.exp()
    if signal == "scaled_logit":
        return scaled_logit(logits, y)
    raise ConfigurationError(f"signal must be one of {SIGNALS}, got {signal!r}")


class ThresholdAttack(MembershipAttack):
    """Yeom et al.'s threshold attack on a per-sample loss or confidence signal.

    Parameters
    ----------
    signal:
        ``"loss"`` (default), ``"confidence"``, ``"max_confidence"`` or ``"scaled_logit"``.
    batch_size, seed:
        Query batch size; the seed is unused (the attack is deterministic).
    """

    name: ClassVar[str] = "threshold"
    requires: ClassVar[Capability] = Capability.SCORES

    def __init__(
        self, *, signal: str = "loss", batch_size: int = 512, seed: int | None = 0
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        if signal not in SIGNALS:
            raise ConfigurationError(f"signal must be one of {SIGNALS}, got {signal!r}")
        self.signal = signal

    def planned_queries(self, classifier: Classifier, n: int) -> int:
        return n

    def _score(
        self,
        classifier: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        logits = query_logits(classifier, x, self.batch_size)
        return signal_from_logits(logits, y, self.signal)
