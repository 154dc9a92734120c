"""One contract, checked on every input defence: parameters validated, outputs well-formed,
deterministic, the model's train/eval mode restored, repr stable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from bastion.defences.input import (
    BitDepth,
    EnergyDetector,
    FeatureSqueezing,
    GaussianNoise,
    InputDetector,
    JPEGCompression,
    MahalanobisDetector,
    MedianFilter,
    Preprocessor,
)

PREPROCESSORS: dict[str, Callable[[], Preprocessor]] = {
    "bit_depth": lambda: BitDepth(bits=3),
    "median_filter": lambda: MedianFilter(size=3),
    "jpeg": lambda: JPEGCompression(quality=60),
    "gaussian_noise": lambda: GaussianNoise(sigma=0.1),
}
DETECTORS: dict[str, Callable[[Any], InputDetector]] = {
    "feature_squeezing": lambda clf: FeatureSqueezing(clf, squeezers=[BitDepth(bits=3)]),
    "mahalanobis": lambda clf: MahalanobisDetector(clf, eps=0.001),
    "energy": lambda clf: EnergyDetector(clf),
}


@pytest.mark.parametrize("name", list(PREPROCESSORS))
def test_preprocessor_contract(name: str, digits_cnn: Any) -> None:
    pre = PREPROCESSORS[name]()
    assert pre.name == name
    x = digits_cnn.x_test[:16]
    a = pre.transform(x, generator=torch.Generator().manual_seed(0))
    b = pre(x, generator=torch.Generator().manual_seed(0))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)  # deterministic given the generator
    assert torch.equal(x, digits_cnn.x_test[:16])  # the input is not modified
    assert repr(pre) == repr(PREPROCESSORS[name]()) and type(pre).__name__ in repr(pre)


@pytest.mark.parametrize("name", list(DETECTORS))
def test_detector_contract(name: str, digits_cnn: Any) -> None:
    det = DETECTORS[name](digits_cnn.clf)
    assert det.name == name
    digits_cnn.clf.reset_queries()
    assert det.fit(digits_cnn.x_train, digits_cnn.y_train) is det
    net = digits_cnn.net
    net.train()
    try:
        s1 = det.score(digits_cnn.x_test)
        assert net.training  # mode restored
        assert s1.shape == (150,) and s1.dtype == torch.float32 and bool(s1.isfinite().all())
        assert torch.equal(s1, det.score(digits_cnn.x_test))
        assert det.calibrate(digits_cnn.x_cal, fpr=0.05) is det
        flags = det.predict(digits_cnn.x_test)
        assert flags.dtype == torch.bool and torch.equal(flags, s1 > det.threshold_)
        xg = digits_cnn.x_test[:8].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(det.differentiable_score(xg).sum(), xg)
        assert float(g.abs().sum()) > 0  # adaptive attacks get a gradient
        assert net.training
    finally:
        net.eval()
    assert repr(det) == repr(DETECTORS[name](digits_cnn.clf))
    assert digits_cnn.clf.queries == 0  # detectors query the model unmetered
