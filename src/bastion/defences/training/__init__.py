"""Training-time defences: adversarial training (PGD-AT, TRADES), differentially private training
(DP-SGD) and its empirical audit."""

from bastion.defences.training.adversarial import (
    AdversarialTrainer,
    AdversarialTrainingReport,
    EpochStats,
)

__all__ = ["AdversarialTrainer", "AdversarialTrainingReport", "EpochStats"]
