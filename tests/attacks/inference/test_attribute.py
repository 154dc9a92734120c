"""Attribute inference: the model's answers add to what a no-query baseline knows."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from bastion.attacks.inference import AttributeInference
from bastion.data import load_digits
from bastion.errors import ConfigurationError, InputError, QueryBudgetExceeded
from bastion.models import TorchClassifier


def test_exact_leak_through_a_linear_model() -> None:
    # label = the sensitive bit: the model's answer reveals it, the prior cannot
    g = torch.Generator().manual_seed(0)
    x = torch.rand(400, 5, generator=g)
    x[:, 2] = (x[:, 2] > 0.7).float()
    y = x[:, 2].long()
    lin = nn.Linear(5, 2)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[1, 2] = 10.0
        lin.bias.copy_(torch.tensor([0.0, -5.0]))
    clf = TorchClassifier(lin, input_shape=(5,), num_classes=2)
    attack = AttributeInference(feature=2, baseline="prior").fit(clf, x[:200], y[:200])
    res = attack.infer(clf, x[200:], y[200:], truth=x[200:, 2])
    assert res.accuracy == 1.0
    assert res.baseline_accuracy == pytest.approx(float((x[200:, 2] == 0).float().mean()))
    assert res.queries == 200 * 2


def test_model_assisted_beats_prior_on_members(fit_mlp: Callable[..., nn.Module]) -> None:
    data = load_digits()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    x, y = data.x[perm].flatten(1), data.y[perm]
    f = 43
    x[:, f] = (x[:, f] >= 0.5).float()
    net = fit_mlp(x[:200], y[:200], hidden=256, epochs=100, lr=3e-3)
    clf = TorchClassifier(net, input_shape=(64,), num_classes=10)
    attack = AttributeInference(feature=f, baseline="prior").fit(clf, x[400:], y[400:])
    members = attack.infer(clf, x[:200], y[:200], truth=x[:200, f])
    others = attack.infer(clf, x[200:400], y[200:400], truth=x[200:400, f])
    assert members.advantage >= 0.05
    assert members.advantage > others.advantage
    imputer = AttributeInference(feature=f).fit(clf, x[400:], y[400:])
    res = imputer.infer(clf, x[:200], y[:200], truth=x[:200, f])
    assert res.baseline_accuracy > members.baseline_accuracy  # the imputer is a stronger baseline
    assert res.accuracy >= res.baseline_accuracy - 0.02
    assert res.finding().owasp == ("ML03",)


def test_budget_and_bad_input() -> None:
    clf = TorchClassifier(nn.Linear(4, 2), input_shape=(4,), num_classes=2, query_budget=5)
    x, y = torch.rand(10, 4, generator=torch.Generator().manual_seed(1)), torch.arange(10) % 2
    attack = AttributeInference(feature=0, values=[0.0, 0.5, 1.0])
    with pytest.raises(ConfigurationError, match="fit"):
        attack.infer(clf, x, y)
    attack.fit(clf, x, y)
    with pytest.raises(QueryBudgetExceeded):
        attack.infer(clf, x, y)  # 30 queries > 5
    assert clf.queries == 0
    with pytest.raises(ConfigurationError):
        AttributeInference(feature=-1)
    with pytest.raises(ConfigurationError):
        AttributeInference(feature=0, values=[1.0])
    xc = torch.rand(40, 4, generator=torch.Generator().manual_seed(2))
    with pytest.raises(InputError, match="distinct values"):
        AttributeInference(feature=1).fit(clf, xc, torch.arange(40) % 2)  # continuous, no values=
    with pytest.raises(ConfigurationError, match="out of range"):
        AttributeInference(feature=9, values=[0, 1]).fit(clf, x, y)
