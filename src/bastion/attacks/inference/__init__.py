"""Confidentiality attacks: membership inference, model inversion and attribute inference."""

from bastion.attacks.inference._common import DefaultTrainer, TrainFn
from bastion.attacks.inference.attribute import AttributeInference, AttributeResult
from bastion.attacks.inference.base import (
    MembershipAttack,
    MembershipResult,
    membership_severity,
)
from bastion.attacks.inference.inversion import (
    InversionResult,
    MIFace,
    ReconstructionMetrics,
    reconstruction_metrics,
)
from bastion.attacks.inference.label_only import LabelOnlyAttack
from bastion.attacks.inference.lira import LiRA
from bastion.attacks.inference.metrics import (
    EpsilonBound,
    RocCurve,
    auc,
    auc_interval,
    clopper_pearson,
    empirical_epsilon,
    roc_curve,
    ssim,
    tpr_at_fpr,
)
from bastion.attacks.inference.shadow import ShadowModelAttack
from bastion.attacks.inference.threshold import ThresholdAttack

__all__ = [
    "AttributeInference",
    "AttributeResult",
    "DefaultTrainer",
    "EpsilonBound",
    "InversionResult",
    "LabelOnlyAttack",
    "LiRA",
    "MIFace",
    "MembershipAttack",
    "MembershipResult",
    "ReconstructionMetrics",
    "RocCurve",
    "ShadowModelAttack",
    "ThresholdAttack",
    "TrainFn",
    "auc",
    "auc_interval",
    "clopper_pearson",
    "empirical_epsilon",
    "membership_severity",
    "reconstruction_metrics",
    "roc_curve",
    "ssim",
    "tpr_at_fpr",
]
