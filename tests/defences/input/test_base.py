"""The detector contract (fit / score / calibrate / predict) and PreprocessedClassifier."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from bastion.attacks.evasion import PGD
from bastion.defences.input import (
    BitDepth,
    EnergyDetector,
    InputDetector,
    PreprocessedClassifier,
    conformal_threshold,
)
from bastion.errors import ConfigurationError, InputError
from bastion.models import TorchClassifier
from bastion.models.base import Classifier


class MeanScore(InputDetector):
    """Score = the mean of each input (a detector with a known score)."""

    name = "mean"
    needs_fit = False

    def _score(self, x: torch.Tensor, *, differentiable: bool = False) -> torch.Tensor:
        return x.flatten(1).mean(1)


class NeedsFit(MeanScore):
    needs_fit = True
    needs_labels = True


def test_conformal_threshold_is_the_corrected_order_statistic() -> None:
    scores = torch.arange(1.0, 100.0)  # n = 99
    # ceil(100 * 0.95) = 95th smallest; the plain 95% quantile would be about 94.1
    assert conformal_threshold(scores, 0.05) == 95.0
    assert conformal_threshold(scores.flip(0), 0.05) == 95.0  # order of input irrelevant
    # n = 19, fpr = 0.05: ceil(20 * 0.95) = 19 -> the maximum
    assert conformal_threshold(torch.arange(19.0), 0.05) == 18.0


def test_conformal_threshold_needs_enough_samples() -> None:
    with pytest.raises(InputError, match="at least 19 clean samples"):
        conformal_threshold(torch.arange(10.0), 0.05)
    with pytest.raises(ConfigurationError, match="fpr"):
        conformal_threshold(torch.arange(10.0), 1.5)


def test_calibrated_false_positive_rate_does_not_exceed_target() -> None:
    """Over many calibration draws of n = 50, the held-out FPR averages at most the target
    (it is exactly 5/51 = 0.098 here) and is not needlessly conservative."""
    g = torch.Generator().manual_seed(0)
    det = MeanScore()
    held_out = torch.rand((20000, 1), generator=g)
    rates = []
    for _ in range(300):
        det.calibrate(torch.rand((50, 1), generator=g), fpr=0.1)
        rates.append(float(det.predict(held_out).float().mean()))
    mean = sum(rates) / len(rates)
    # standard error of the mean over 300 draws is about 0.04 / sqrt(300) = 0.0024
    assert 0.085 <= mean <= 0.1 + 0.006


def test_held_out_fpr_near_target_on_a_real_detector(digits_cnn: Any) -> None:
    cal, rest = digits_cnn.x_cal[:150], torch.cat([digits_cnn.x_cal[150:], digits_cnn.x_test])
    det = EnergyDetector(digits_cnn.clf).calibrate(cal, fpr=0.1)
    rate = float(det.predict(rest).float().mean())
    assert det.n_calibration_ == 150 and det.calibration_fpr_ == 0.1
    # 300 held-out digits: one standard error is about 0.017
    assert rate <= 0.1 + 3 * math.sqrt(0.1 * 0.9 / 300)
    assert rate >= 0.03


def test_detector_contract_errors() -> None:
    det = NeedsFit()
    with pytest.raises(ConfigurationError, match="not fitted"):
        det.score(torch.rand(3, 2))
    with pytest.raises(InputError, match="labels"):
        det.fit(torch.rand(3, 2))
    with pytest.raises(InputError, match="3 labels for 4"):
        det.fit(torch.rand(4, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(InputError, match="non-empty"):
        MeanScore().score(torch.rand(0, 2))
    with pytest.raises(InputError, match="floating"):
        MeanScore().score(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ConfigurationError, match="calibrate"):
        MeanScore().predict(torch.rand(3, 2))
    with pytest.raises(ConfigurationError, match="batch_size"):
        MeanScore(batch_size=0)
    fitted = det.fit(torch.rand(4, 2), torch.tensor([0, 1, 0, 1]))
    assert fitted is det and det.fitted_
    assert "MeanScore" in repr(MeanScore()) and "batch_size=256" in repr(MeanScore())


def test_score_is_batched_and_detached() -> None:
    det = MeanScore(batch_size=3)
    x = torch.rand(10, 4, requires_grad=True)
    s = det.score(x)
    assert s.shape == (10,) and not s.requires_grad
    assert torch.allclose(s, x.detach().mean(1))


def _linear_clf() -> TorchClassifier:
    torch.manual_seed(0)
    return TorchClassifier(
        nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), input_shape=(1, 2, 2), num_classes=3
    )


def test_preprocessed_classifier_is_a_classifier_and_applies_the_transform() -> None:
    clf = _linear_clf()
    defended = PreprocessedClassifier(clf, BitDepth(bits=1))
    assert isinstance(defended, Classifier)
    assert defended.input_shape == (1, 2, 2) and defended.num_classes == 3
    x = torch.rand(6, 1, 2, 2)
    assert torch.equal(defended.logits(x), clf.logits(torch.round(x)))
    assert defended.queries == 6
    assert torch.equal(defended.predict(x), clf.logits(torch.round(x)).argmax(1))


def test_attacks_run_unchanged_on_a_preprocessed_classifier() -> None:
    clf = _linear_clf()
    defended = PreprocessedClassifier(clf, BitDepth(bits=1))
    x = torch.rand(16, 1, 2, 2)
    res = PGD(eps=0.1, steps=5).generate(defended, x)
    assert res.x_adv.shape == x.shape
    assert float((res.x_adv - x).abs().max()) <= 0.1 + 1e-6


def test_preprocessed_classifier_validation() -> None:
    with pytest.raises(ConfigurationError, match="Classifier"):
        PreprocessedClassifier(nn.Linear(2, 2), BitDepth())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="Preprocessor"):
        PreprocessedClassifier(_linear_clf(), torch.round)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="shape"):
        PreprocessedClassifier(_linear_clf(), BitDepth()).logits(torch.rand(2, 4))
