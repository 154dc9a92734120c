"""Training-time defences: adversarial training (PGD-AT, TRADES, fast and free AT), differentially
private training (DP-SGD) and its empirical audit."""

from bastion.defences.training.adversarial import (
    AdversarialTrainer,
    AdversarialTrainingReport,
    EpochStats,
)
from bastion.defences.training.cheap import (
    FastAdversarialTrainer,
    FreeAdversarialTrainer,
    OverfitGuard,
    make_adversarial_trainer,
)

__all__ = [
    "AdversarialTrainer",
    "AdversarialTrainingReport",
    "EpochStats",
    "FastAdversarialTrainer",
    "FreeAdversarialTrainer",
    "OverfitGuard",
    "make_adversarial_trainer",
]
