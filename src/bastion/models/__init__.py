"""Model adapters: one :class:`Classifier` contract over torch, scikit-learn, ONNX and HTTP."""

from bastion.models.base import (
    BaseClassifier,
    Capability,
    Classifier,
    check_bounds,
    check_labels,
    unmetered,
)
from bastion.models.loading import ModelFormat, detect_format, load_model
from bastion.models.onnx_model import OnnxClassifier
from bastion.models.remote import FakeEndpoint, RemoteClassifier
from bastion.models.sklearn_model import (
    SklearnLabelClassifier,
    SklearnScoreClassifier,
    from_sklearn,
)
from bastion.models.torch_model import TorchClassifier

__all__ = [
    "BaseClassifier",
    "Capability",
    "Classifier",
    "FakeEndpoint",
    "ModelFormat",
    "OnnxClassifier",
    "RemoteClassifier",
    "SklearnLabelClassifier",
    "SklearnScoreClassifier",
    "TorchClassifier",
    "check_bounds",
    "check_labels",
    "detect_format",
    "from_sklearn",
    "load_model",
    "unmetered",
]
