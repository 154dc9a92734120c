"""STRIP at inference time, confident learning on label flips, and the evaluator."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from bastion.attacks.poisoning import LabelFlip
from bastion.defences.data import (
    STRIP,
    ConfidentLearning,
    confident_joint,
    detection_score,
    evaluate_detectors,
)
from bastion.errors import ConfigurationError, InputError


def test_strip_rejects_triggered_inputs_at_5pct_false_rejections(backdoored: Any) -> None:
    b = backdoored
    pool, calib, held = b.x_test[:150], b.x_test[150:250], b.x_test[250:]
    strip = STRIP(b.net).fit(pool)
    strip.calibrate(calib, fpr=0.05)
    assert int(strip.predict(calib).sum()) <= 0.05 * calib.shape[0]
    y_held = b.y_test[250:]
    triggered = b.attack.apply_trigger(held[y_held != 0])
    assert float(strip.predict(triggered).float().mean()) >= 0.9
    # on unseen clean inputs the false-rejection rate stays near the calibrated 5%
    assert float(strip.predict(held).float().mean()) <= 0.12


def test_strip_is_deterministic_and_restores_mode(backdoored: Any) -> None:
    b = backdoored
    strip = STRIP(b.net, n_perturbations=4).fit(b.x_test[:50])
    b.net.train()
    try:
        s1, s2 = strip.score(b.x_test[50:60]), strip.score(b.x_test[50:60])
        assert b.net.training
    finally:
        b.net.eval()
    assert torch.equal(s1, s2)


@pytest.mark.parametrize(
    "kwargs",
    [{"n_perturbations": 1}, {"alpha": 1.0}, {"mode": "sum"}, {"entropy": "max"}],
)
def test_strip_bad_parameters(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        STRIP(nn.Linear(2, 2), **kwargs)


def test_strip_must_be_fitted_and_shapes_checked() -> None:
    strip = STRIP(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    with pytest.raises(ConfigurationError, match="not fitted"):
        strip.score(torch.rand(2, 4))
    strip.fit(torch.rand(10, 4))
    with pytest.raises(InputError, match="input shape"):
        strip.score(torch.rand(2, 5))


def test_confident_learning_finds_label_flips(digits_split: Any) -> None:
    x, y, _, _ = digits_split
    flipped = LabelFlip(rate=0.1, seed=0).poison(x, y)
    cl = ConfidentLearning(seed=0).fit(flipped.x, flipped.y)
    score = detection_score(cl.flags_, flipped.mask)
    assert score.recall >= 0.8
    assert score.precision >= 0.8
    # the fold models score new samples: a flipped copy of a test input looks wrong
    assert float(cl.score(x[:5], (y[:5] + 1) % 10).min()) > float(cl.score(x[:5], y[:5]).max())


def test_confident_joint_closed_form() -> None:
    probs = torch.tensor(
        [[0.9, 0.1, 0.0], [0.7, 0.3, 0.0], [0.1, 0.8, 0.1], [0.6, 0.4, 0.0], [0.0, 0.2, 0.8]]
    ).double()
    y = torch.tensor([0, 0, 1, 1, 2])
    # thresholds: t0 = 0.8, t1 = 0.6, t2 = 0.8
    c, assigned = confident_joint(probs, y)
    assert assigned.tolist() == [0, -1, 1, -1, 2]
    assert c.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]


def test_prune_by_noise_rate_on_given_probabilities() -> None:
    g = torch.Generator().manual_seed(0)
    n, k = 300, 3
    truth = torch.arange(n) % k
    probs = torch.full((n, k), 0.05).double()
    probs[torch.arange(n), truth] = 0.9
    probs += 0.01 * torch.rand(n, k, generator=g).double()
    probs /= probs.sum(1, keepdim=True)
    given = truth.clone()
    wrong = torch.arange(0, n, 10)
    given[wrong] = (given[wrong] + 1) % k
    for method in ("prune_by_noise_rate", "off_diagonal", "both"):
        flags = ConfidentLearning(method=method).fit_probs(probs, given).flags_
        assert torch.nonzero(flags).flatten().tolist() == wrong.tolist()


def test_confident_learning_validation() -> None:
    with pytest.raises(ConfigurationError):
        ConfidentLearning(n_folds=1)
    with pytest.raises(ConfigurationError):
        ConfidentLearning(method="vote")
    with pytest.raises(InputError, match="probabilities"):
        ConfidentLearning().fit_probs(torch.ones(3, 2), torch.tensor([0, 1, 0]))
    cl = ConfidentLearning().fit_probs(torch.eye(2).double(), torch.tensor([0, 1]))
    with pytest.raises(ConfigurationError, match="fold models"):
        cl.score(torch.rand(2, 2), torch.tensor([0, 1]))


def test_evaluator_counts() -> None:
    mask = torch.tensor([True, True, False, False, False])
    scores = evaluate_detectors(
        {"all": torch.ones(5, dtype=torch.bool), "none": torch.zeros(5, dtype=torch.bool)}, mask
    )
    assert scores["all"].to_dict()["precision"] == pytest.approx(0.4)
    assert scores["all"].recall == 1.0 and scores["all"].f1 == pytest.approx(2 * 0.4 / 1.4)
    assert scores["none"].precision == 1.0 and scores["none"].recall == 0.0
    assert scores["none"].f1 == 0.0
    with pytest.raises(InputError):
        detection_score(torch.ones(3, dtype=torch.bool), mask)
