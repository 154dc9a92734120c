"""Equation solving recovers a digits logistic regression exactly (up to softmax shift)."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks.extraction import EquationSolving, black_box
from bastion.defences.output import HardenedClassifier, Rounding
from bastion.errors import CapabilityError, ConfigurationError, QueryBudgetExceeded
from bastion.models import TorchClassifier, from_sklearn

D, K = 64, 10


def _true(est: object) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.tensor(est.coef_, dtype=torch.float64)  # type: ignore[attr-defined]
    b = torch.tensor(est.intercept_, dtype=torch.float64)  # type: ignore[attr-defined]
    return w - w.mean(0), b - b.mean()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def test_recovers_digits_logreg_from_scores(digits_logreg, digits_split) -> None:
    x, y = digits_split
    victim = from_sklearn(digits_logreg, access="scores", input_shape=(1, 8, 8))
    res = EquationSolving(query_budget=(D + 1) * K).extract(
        victim, x_eval=x[1400:], y_eval=y[1400:]
    )
    w, b = _true(digits_logreg)
    assert res.queries == D + 1 <= (D + 1) * K
    assert victim.queries == D + 1
    assert _rel(res.surrogate.weight, w) < 1e-4
    assert _rel(res.surrogate.bias, b) < 1e-4
    assert res.fidelity == 1.0
    assert res.extra["residual"] < 1e-6


def test_probabilities_match_and_more_queries_still_exact(digits_logreg, digits_split) -> None:
    x, _ = digits_split
    victim = from_sklearn(digits_logreg, access="scores", input_shape=(1, 8, 8))
    res = EquationSolving(query_budget=300, queries=300, seed=3).extract(victim)
    assert res.queries == 300
    probs = torch.softmax(res.surrogate(x[1400:].double()), dim=1)
    ref = torch.tensor(digits_logreg.predict_proba(x[1400:].reshape(-1, D).double().numpy()))
    assert float((probs - ref).abs().max()) < 1e-5


def test_rounding_to_two_decimals_is_reported_not_exact(
    digits_logreg, digits_split, caplog
) -> None:
    x, y = digits_split
    victim = from_sklearn(digits_logreg, access="scores", input_shape=(1, 8, 8))
    hardened = HardenedClassifier(victim, Rounding(decimals=2))
    w, _ = _true(digits_logreg)
    with caplog.at_level("WARNING", logger="bastion.attacks.extraction.equation_solving"):
        res = EquationSolving(query_budget=(D + 1) * K).extract(
            hardened, x_eval=x[1400:], y_eval=y[1400:]
        )
    assert _rel(res.surrogate.weight, w) > 0.1
    assert res.extra["status"] != "exact"
    assert "could not recover the model exactly" in caplog.text
    # even a least-squares fit over the whole (d+1)k budget stays far from the model, and says so
    res = EquationSolving(query_budget=(D + 1) * K, queries=(D + 1) * K).extract(
        hardened, x_eval=x[1400:], y_eval=y[1400:]
    )
    assert _rel(res.surrogate.weight, w) > 0.1
    assert res.extra["status"] == "inconsistent"
    assert res.extra["residual"] > 0.01


def test_white_box_float64_victim_is_exact() -> None:
    torch.manual_seed(1)
    lin = torch.nn.Linear(6, 4).double()
    victim = TorchClassifier(lin, input_shape=(6,), num_classes=4)
    res = EquationSolving(query_budget=7).extract(victim)
    w = lin.weight.detach()
    assert torch.allclose(res.surrogate.weight, w - w.mean(0), atol=1e-9)


def test_needs_scores_and_enough_budget(digits_logreg) -> None:
    labels = from_sklearn(digits_logreg, access="labels", input_shape=(1, 8, 8))
    with pytest.raises(CapabilityError, match="scores"):
        EquationSolving(query_budget=100).extract(labels)
    scores = from_sklearn(digits_logreg, access="scores", input_shape=(1, 8, 8))
    with pytest.raises(QueryBudgetExceeded, match="d \\+ 1 = 65"):
        EquationSolving(query_budget=64).extract(scores)
    assert scores.queries == 0
    with pytest.raises(ConfigurationError, match="exceeds query_budget"):
        EquationSolving(query_budget=10, queries=20)
    with pytest.raises(ConfigurationError, match="queries"):
        EquationSolving(query_budget=10, queries=1)


def test_label_only_view_is_refused(digits_logreg) -> None:
    clf = from_sklearn(digits_logreg, input_shape=(1, 8, 8))
    with pytest.raises(CapabilityError):
        EquationSolving(query_budget=100).extract(black_box(clf, access="labels"))
