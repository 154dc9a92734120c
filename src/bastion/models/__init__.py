"""Model adapters: one :class:`Classifier` contract over torch, scikit-learn, ONNX and HTTP."""

import importlib
from typing import Any

from bastion.models.base import (
    BaseClassifier,
    Capability,
    Classifier,
    check_bounds,
    check_labels,
    unmetered,
)
from bastion.models.torch_model import TorchClassifier

# Adapters that import heavy optional stacks (onnxruntime, scikit-learn, httpx) load on first use.
_LAZY = {
    "ModelFormat": "loading",
    "detect_format": "loading",
    "load_model": "loading",
    "OnnxClassifier": "onnx_model",
    "FakeEndpoint": "remote",
    "RemoteClassifier": "remote",
    "SklearnLabelClassifier": "sklearn_model",
    "SklearnScoreClassifier": "sklearn_model",
    "from_sklearn": "sklearn_model",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"bastion.models.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'bastion.models' has no attribute {name!r}")

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
