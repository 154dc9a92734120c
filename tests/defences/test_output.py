"""Output hardening: closed-form policies, the hardened wrapper, and its effect on extraction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bastion.attacks.extraction import CopycatCNN, EquationSolving
from bastion.data import load_digits
from bastion.defences.output import (
    GaussianNoise,
    HardenedClassifier,
    LabelOnly,
    ReverseSigmoid,
    Rounding,
    TopK,
    evaluate_output_policies,
)
from bastion.errors import CapabilityError, ConfigurationError, QueryBudgetExceeded
from bastion.models import TorchClassifier, from_sklearn

GEN = torch.Generator().manual_seed(0)
P = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.25, 0.65]], dtype=torch.float64)


def test_topk_and_rounding_closed_form() -> None:
    top2 = torch.tensor([[0.5, 0.3, 0.0], [0.0, 0.25, 0.65]], dtype=torch.float64)
    assert torch.equal(TopK(k=2).apply(P, GEN), top2)
    assert torch.equal(TopK(k=5).apply(P, GEN), P)
    q = Rounding(decimals=1).apply(torch.tensor([[0.456, 0.544]]).double(), GEN)
    assert torch.allclose(q, torch.tensor([[0.5, 0.5]]).double())
    assert torch.equal(LabelOnly().apply(P, GEN), torch.tensor([[1, 0, 0], [0, 0, 1]]).double())


def test_reverse_sigmoid_closed_form() -> None:
    # gamma = 1: q ∝ p - beta (p - 1/2); beta = 1 flattens every vector to uniform
    q = ReverseSigmoid(beta=1.0, gamma=1.0).apply(P, GEN)
    assert torch.allclose(q, torch.full_like(P, 1 / 3))
    q = ReverseSigmoid(beta=0.5, gamma=1.0).apply(P, GEN)
    expected = 0.5 * P + 0.25
    assert torch.allclose(q, expected / expected.sum(1, keepdim=True))
    # a uniform binary vector is a fixed point for any beta, gamma
    half = torch.tensor([[0.5, 0.5]]).double()
    assert torch.allclose(ReverseSigmoid(beta=0.7, gamma=0.3).apply(half, GEN), half)


def test_calibrated_noise_keeps_the_top_class() -> None:
    g = torch.Generator().manual_seed(1)
    p = torch.softmax(torch.randn(2000, 10, generator=g) * 0.3, dim=1).double()  # near-ties
    q = GaussianNoise(sigma=0.2).apply(p, torch.Generator().manual_seed(2))
    assert torch.equal(q.argmax(1), p.argmax(1))
    assert torch.allclose(q.sum(1), torch.ones(2000, dtype=torch.float64))
    assert bool((q >= 0).all())
    assert float((q - p).abs().mean()) > 0.02


def test_policies_validate_parameters() -> None:
    for bad in (
        lambda: TopK(k=0),
        lambda: Rounding(decimals=-1),
        lambda: GaussianNoise(sigma=0),
        lambda: GaussianNoise(sigma=0.1, seed=1.5),
        lambda: ReverseSigmoid(beta=-1),
    ):
        with pytest.raises(ConfigurationError):
            bad()


def _clf() -> TorchClassifier:
    torch.manual_seed(0)
    return TorchClassifier(nn.Linear(4, 3), input_shape=(4,), num_classes=3)


def test_hardened_classifier_contract() -> None:
    clf = _clf()
    x = torch.rand(6, 4)
    hard = HardenedClassifier(clf, TopK(k=1), query_budget=12)
    out = hard.logits(x)
    assert torch.equal(hard.predict(x), clf.module(x).argmax(1))
    assert int((out > np.log(1e-11)).sum()) == 6  # one finite score per row
    assert (hard.queries, clf.queries) == (12, 12)
    with pytest.raises(QueryBudgetExceeded):
        hard.predict(torch.rand(1, 4))
    labels = HardenedClassifier(clf, LabelOnly())
    with pytest.raises(CapabilityError, match="label-only"):
        labels.logits(x)
    assert torch.equal(labels.predict(x), clf.predict(x))
    with pytest.raises(CapabilityError):
        HardenedClassifier(labels, Rounding())
    with pytest.raises(ConfigurationError, match="OutputPolicy"):
        HardenedClassifier(clf, "topk")  # type: ignore[arg-type]
    a = HardenedClassifier(clf, GaussianNoise(sigma=0.1, seed=3))
    b = HardenedClassifier(clf, GaussianNoise(sigma=0.1, seed=3))
    assert torch.equal(a.logits(x), b.logits(x))


@pytest.fixture(scope="module")
def digits_lr() -> tuple[object, torch.Tensor, torch.Tensor]:
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    data = load_digits()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    x, y = data.x[perm], data.y[perm]
    with threadpool_limits(limits=1):
        est = LogisticRegression(max_iter=3000).fit(
            x[:1200].reshape(1200, -1).double().numpy(), y[:1200].numpy()
        )
    return est, x, y


def test_policies_against_equation_solving_and_copycat(digits_lr) -> None:
    from threadpoolctl import threadpool_limits

    est, x, y = digits_lr
    victim = from_sklearn(est, access="scores", input_shape=(1, 8, 8))
    attacks = [EquationSolving(query_budget=650), CopycatCNN(query_budget=1200, rounds=1)]
    policies = [Rounding(decimals=2), TopK(k=1), GaussianNoise(sigma=0.05), LabelOnly()]
    with threadpool_limits(limits=1):
        rows = evaluate_output_policies(
            victim, policies, attacks, x[1200:1500], y[1200:1500], x_pool=x[:1200]
        )
    by = {r.policy: r for r in rows}
    assert rows[0].policy == "none"
    base = by["none"]
    assert base.accuracy_cost == 0.0 and base.accuracy > 0.9
    assert base.attacks["equation"]["fidelity"] == 1.0
    # the solver leaves the scores rounded to 0 out (censored), so rounding hurts it less than
    # it hurt a solver that trusted them, but still costs it a large share of its fidelity
    assert by["rounding(decimals=2)"].attacks["equation"]["fidelity_drop"] > 0.2
    assert by["topk(k=1)"].attacks["equation"]["fidelity_drop"] > 0.5
    assert by["noise(sigma=0.05)"].attacks["equation"]["fidelity_drop"] > 0.5
    assert by["label-only"].attacks["equation"]["blocked"]
    assert by["label-only"].attacks["equation"]["fidelity_drop"] == 1.0
    for name in ("topk(k=1)", "noise(sigma=0.05)", "label-only"):
        assert by[name].accuracy_cost == 0.0  # these policies keep the top class
        # a label-only learner is not stopped by hiding scores
        assert abs(by[name].attacks["copycat/pool"]["fidelity_drop"]) < 0.05
    assert by["label-only"].to_dict()["attacks"]["copycat/pool"]["queries"] == 1200
