"""Certified robustness: randomized smoothing (Cohen, Rosenfeld & Kolter 2019) with prediction
under abstention, per-sample certified L2 radii, certified accuracy vs radius, and the
Gaussian-augmentation training that its base classifier needs."""

from bastion.defences.certify.smoothing import (
    ABSTAIN,
    CertifyResult,
    SmoothedClassifier,
    certified_accuracy,
)
from bastion.defences.certify.training import (
    GaussianAugmentationReport,
    train_gaussian_augmentation,
)

__all__ = [
    "ABSTAIN",
    "CertifyResult",
    "GaussianAugmentationReport",
    "SmoothedClassifier",
    "certified_accuracy",
    "train_gaussian_augmentation",
]
