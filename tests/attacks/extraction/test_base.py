"""The extraction contract: the budgeted oracle, results, black-box views and metrics."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from bastion.attacks.extraction import (
    ExtractionResult,
    KnockoffNets,
    QueryOracle,
    black_box,
    fidelity,
)
from bastion.attacks.extraction.catalog import build_extraction_attack, parse_policy
from bastion.defences.output import GaussianNoise, LabelOnly, ReverseSigmoid, Rounding, TopK
from bastion.errors import CapabilityError, ConfigurationError, InputError, QueryBudgetExceeded
from bastion.models import TorchClassifier


def _linear(seed: int = 0) -> TorchClassifier:
    torch.manual_seed(seed)
    return TorchClassifier(nn.Linear(4, 3), input_shape=(4,), num_classes=3)


def test_oracle_refuses_before_querying() -> None:
    clf = _linear()
    oracle = QueryOracle(clf, 10, batch_size=3)
    assert oracle.labels(torch.rand(7, 4)).shape == (7,)
    assert (oracle.used, oracle.remaining, clf.queries) == (7, 3, 7)
    with pytest.raises(QueryBudgetExceeded, match="budget of 10"):
        oracle.logits(torch.rand(4, 4))
    assert (oracle.used, clf.queries) == (7, 7)
    probs = oracle.probabilities(torch.rand(3, 4))
    assert torch.allclose(probs.sum(1), torch.ones(3))
    assert oracle.remaining == 0


def test_result_round_trips_through_json() -> None:
    clf = _linear()
    x = torch.rand(200, 4)
    res = KnockoffNets(query_budget=100, rounds=2, epochs=2, surrogate="linear").extract(
        clf, x_pool=x[:150], x_eval=x[150:], y_eval=torch.zeros(50, dtype=torch.long)
    )
    doc = json.loads(json.dumps(res.to_dict()))
    back = ExtractionResult.from_dict(doc)
    assert back == res  # the surrogate is not compared
    assert back.surrogate is None and back.history == res.history
    assert doc["params"]["strategy"] == "pool" and doc["queries"] == 100
    assert res.victim_accuracy == pytest.approx(float((clf.predict(x[150:]) == 0).float().mean()))
    with pytest.raises(ConfigurationError, match="no surrogate"):
        back.surrogate_classifier()
    assert "query_budget=100" in repr(KnockoffNets(query_budget=100))


def test_black_box_views_hide_what_they_should() -> None:
    clf = _linear()
    x = torch.rand(5, 4)
    scores = black_box(clf)
    out = scores.logits(x)
    assert not out.requires_grad
    assert torch.allclose(out, torch.log_softmax(clf.module(x), 1), atol=1e-6)
    assert (scores.queries, clf.queries) == (5, 5)
    with scores.unmetered():
        scores.predict(x)
    assert (scores.queries, clf.queries) == (5, 5)
    labels = black_box(clf, access="labels")
    with pytest.raises(CapabilityError):
        labels.logits(x)
    with pytest.raises(CapabilityError):
        black_box(labels, access="scores")
    with pytest.raises(ConfigurationError):
        black_box(clf, access="gradients")  # type: ignore[arg-type]


def test_fidelity_closed_form() -> None:
    clf = _linear()
    x = torch.rand(50, 4)
    assert fidelity(clf.module, clf, x) == 1.0
    flipped = nn.Linear(4, 3)
    with torch.no_grad():
        flipped.weight.copy_(-clf.module.weight)
        flipped.bias.copy_(-clf.module.bias)
    # the argmax of -z is the argmin of z: never the same class for 3 distinct logits
    assert fidelity(flipped, clf, x) == 0.0
    with pytest.raises(InputError):
        fidelity(clf.module, clf, torch.rand(5, 3))


def test_catalog() -> None:
    assert build_extraction_attack("equation", query_budget=10).name == "equation"
    assert build_extraction_attack("jacobian", query_budget=10).strategy.name == "jacobian"
    assert build_extraction_attack("noise", query_budget=10, labels="hard").labels == "hard"
    with pytest.raises(ConfigurationError, match="strategy"):
        build_extraction_attack("bandit", query_budget=10)
    assert parse_policy("topk:3") == TopK(k=3)
    assert parse_policy("rounding") == Rounding(decimals=2)
    assert parse_policy("label-only") == LabelOnly()
    assert parse_policy("noise:0.1") == GaussianNoise(sigma=0.1)
    assert parse_policy("reverse-sigmoid:0.5,0.2") == ReverseSigmoid(beta=0.5, gamma=0.2)
    for bad in ("topk:x", "topk:0", "median"):
        with pytest.raises(ConfigurationError):
            parse_policy(bad)


def test_victim_mode_is_restored_and_queries_run_in_eval_mode() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.9), nn.Linear(16, 3))
    clf = TorchClassifier(net, input_shape=(4,), num_classes=3)
    net.train()
    x = torch.rand(100, 4)
    with torch.no_grad():
        reference = net.eval()(x).argmax(1)
    net.train()
    res = KnockoffNets(query_budget=100, rounds=1, epochs=1).extract(
        clf, x_pool=x, x_eval=x, y_eval=reference
    )
    assert net.training and net[1].training
    assert res.victim_accuracy == 1.0  # dropout was off while the victim answered
    with pytest.raises(InputError):
        KnockoffNets(query_budget=10).extract(clf, x_pool=x, y_eval=reference)
    assert net.training
