"""Model adapters: one :class:`Classifier` contract over torch, scikit-learn, ONNX and HTTP."""

from bastion.models.base import BaseClassifier, Capability, Classifier, check_bounds, check_labels
from bastion.models.torch_model import TorchClassifier

__all__ = [
    "BaseClassifier",
    "Capability",
    "Classifier",
    "TorchClassifier",
    "check_bounds",
    "check_labels",
]
