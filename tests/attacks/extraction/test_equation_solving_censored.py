"""Equation solving on confident victims: clamped (censored) scores are never used as equations.

The score adapters clamp probabilities at 1e-12; on a logistic regression whose coefficients
are scaled up, many answers sit at that floor. The solver must use only the uncensored ones,
query more where a class is censored too often, and say so when it cannot recover the model.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from bastion.attacks.extraction import EquationSolving, black_box
from bastion.models import from_sklearn
from bastion.models.base import BaseClassifier, Capability, censored_outputs
from bastion.models.remote import FakeEndpoint, RemoteClassifier

D, K = 64, 10
FLOOR = math.log(1e-12)


def _scaled(est: object, scale: float) -> object:
    out = copy.deepcopy(est)
    out.coef_ = out.coef_ * scale  # type: ignore[attr-defined]
    out.intercept_ = out.intercept_ * scale  # type: ignore[attr-defined]
    return out


def _rel_weight(res: object, est: object) -> float:
    w = torch.tensor(est.coef_, dtype=torch.float64)  # type: ignore[attr-defined]
    w = w - w.mean(0)
    got = res.surrogate.weight  # type: ignore[attr-defined]
    return float(torch.linalg.norm(got - w) / torch.linalg.norm(w))


@pytest.mark.parametrize("scale", [1, 3, 10])
def test_confident_victims_are_recovered_exactly(digits_logreg, digits_split, scale) -> None:
    x, y = digits_split
    est = _scaled(digits_logreg, scale)
    victim = from_sklearn(est, access="scores", input_shape=(1, 8, 8))
    res = EquationSolving(query_budget=(D + 1) * K).extract(
        victim, x_eval=x[1400:], y_eval=y[1400:]
    )
    assert res.extra["status"] == "exact"
    assert res.extra["undetermined_classes"] == []
    assert _rel_weight(res, est) < 1e-5
    assert res.fidelity == 1.0
    if scale > 1:
        # the victim really is confident: clamped answers were seen and left out
        assert res.extra["censored"] > 0
        # classes censored in the first d + 1 rows needed more queries, within the budget
        assert D + 1 < res.queries <= (D + 1) * K


@pytest.mark.parametrize("scale", [3, 10])
def test_too_small_a_budget_says_it_cannot_recover(digits_logreg, scale, caplog) -> None:
    est = _scaled(digits_logreg, scale)
    victim = from_sklearn(est, access="scores", input_shape=(1, 8, 8))
    with caplog.at_level("WARNING", logger="bastion.attacks.extraction.equation_solving"):
        res = EquationSolving(query_budget=D + 1).extract(victim)
    assert res.queries == D + 1
    assert res.extra["status"] == "underdetermined"
    assert res.extra["undetermined_classes"]
    assert "could not recover the model exactly" in caplog.text
    assert "raise query_budget" in res.extra["why"]


def test_adapters_report_censored_outputs(digits_logreg, digits_split) -> None:
    x, _ = digits_split
    est = _scaled(digits_logreg, 10)
    victim = from_sklearn(est, access="scores", input_shape=(1, 8, 8))
    assert victim.score_floor == pytest.approx(FLOOR)
    scores = victim.logits(x[:50])
    mask = victim.censored(scores)
    proba = torch.tensor(est.predict_proba(x[:50].reshape(50, -1).double().numpy()))  # type: ignore[attr-defined]
    # every clamped probability is marked, and nothing well above the floor is
    assert bool(mask[proba < 1e-12].all())
    assert not bool(mask[proba > 1e-11].any())
    # a black-box view keeps the floor of what it wraps
    view = black_box(victim)
    assert view.score_floor == victim.score_floor
    assert torch.equal(censored_outputs(view, view.logits(x[:50])), mask)
    # the remote adapter clamps the endpoint's probabilities the same way
    remote = RemoteClassifier("http://victim.test/predict", input_shape=(1, 8, 8),
                              num_classes=K, transport=FakeEndpoint(victim), query_budget=None)
    assert remote.score_floor == pytest.approx(FLOOR)
    assert torch.equal(remote.censored(remote.logits(x[:50])), mask)
    labels = RemoteClassifier("http://victim.test/predict", input_shape=(1, 8, 8),
                              num_classes=K, mode="labels", transport=FakeEndpoint(victim),
                            query_budget=None)
    assert labels.score_floor is None


def test_onnx_probability_output_is_censored() -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from bastion.models import OnnxClassifier

    rng = np.random.default_rng(0)
    w = (rng.normal(size=(4, 3)) * 40).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["z"]),
         helper.make_node("Softmax", ["z"], ["probabilities"], axis=1)],
        "lin", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", 3])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    clf = OnnxClassifier(model.SerializeToString())
    assert clf.output == "probabilities"
    assert clf.score_floor == pytest.approx(FLOOR)
    x = torch.rand(64, 4, generator=torch.Generator().manual_seed(0))
    mask = clf.censored(clf.logits(x))
    assert bool(mask.any()) and not bool(mask.all())
    logits_clf = OnnxClassifier(model.SerializeToString(), output="logits")
    assert logits_clf.score_floor is None
    del onnx


class _QuietClamp(BaseClassifier):
    """A linear softmax victim that clamps its log-probabilities without declaring a floor."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__(input_shape=(weight.shape[1],), num_classes=weight.shape[0],
                         capabilities=Capability.score_only())
        self.weight, self.bias = weight, bias

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(x.double() @ self.weight.T + self.bias, dim=1)
        return logp.clamp_min(-20.0)


def test_an_undeclared_clamp_is_detected() -> None:
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 5, generator=g, dtype=torch.float64) * 30
    bias = torch.randn(4, generator=g, dtype=torch.float64)
    victim = _QuietClamp(weight, bias)
    assert victim.score_floor is None
    res = EquationSolving(query_budget=400).extract(victim)
    assert res.extra["undeclared_floor"] is True
    assert res.extra["censored"] > 0
    w = weight - weight.mean(0)
    if res.extra["status"] == "exact":
        assert float(torch.linalg.norm(res.surrogate.weight - w) / torch.linalg.norm(w)) < 1e-6
    else:  # never a silently wrong model
        assert res.extra["status"] == "underdetermined"
