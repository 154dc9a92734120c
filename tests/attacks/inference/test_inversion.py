"""MI-Face on digits: white-box and score-based reconstructions resemble their class."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from bastion.attacks.inference import MIFace, reconstruction_metrics
from bastion.data import load_digits
from bastion.errors import CapabilityError, ConfigurationError, InputError, QueryBudgetExceeded
from bastion.models import BaseClassifier, Capability, TorchClassifier

Setup = tuple[TorchClassifier, nn.Module, TorchClassifier, torch.Tensor, torch.Tensor]


class _View(BaseClassifier):
    """A score-only (or label-only) view of a torch module, like a deployed prediction API."""

    def __init__(self, module: nn.Module, caps: Capability, budget: int | None = None) -> None:
        super().__init__(
            input_shape=(1, 8, 8), num_classes=10, capabilities=caps, query_budget=budget
        )
        self.module = module

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if Capability.SCORES not in self.capabilities:
            raise CapabilityError("labels only")
        return super().logits(x)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.log_softmax(self.module(x), 1)


@pytest.fixture(scope="module")
def setup(fit_mlp: Callable[..., nn.Module]) -> Setup:
    """Two target MLPs on 900 digits, a recognizer on 897 others."""
    data = load_digits()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    x, y = data.x[perm], data.y[perm]
    target = fit_mlp(x[:900], y[:900], epochs=20, lr=3e-3, seed=0)
    other = fit_mlp(x[:900], y[:900], hidden=32, epochs=20, seed=2)
    rec = fit_mlp(x[900:], y[900:], epochs=20, lr=3e-3, seed=1)
    wrap = TorchClassifier(target, input_shape=(1, 8, 8), num_classes=10)
    recognizer = TorchClassifier(rec, input_shape=(1, 8, 8), num_classes=10)
    return wrap, other, recognizer, x[:900], y[:900]


def test_white_box_reconstructions_resemble_their_class(setup: Setup) -> None:
    clf, _, recognizer, x, y = setup
    res = MIFace(steps=200, tv=0.3).infer(clf, list(range(10)))
    assert res.method == "white-box" and res.queries == 10 * 200
    assert float(res.confidence.min()) > 0.9
    m = reconstruction_metrics(res, x, y, recognizer=recognizer)
    assert m.recognition_rate is not None and m.recognition_rate >= 0.8
    assert m.closer_to_own_mean >= 0.8
    # the starting point (mid-grey) is recognised as at most one class and near no class
    start = MIFace(steps=1, lr=1e-9).infer(clf, list(range(10)))
    base = reconstruction_metrics(start, x, y, recognizer=recognizer)
    assert base.recognition_rate is not None and base.recognition_rate <= 0.2
    assert float(m.ssim.mean()) > float(base.ssim.mean())
    assert m.finding(res).atlas == ("AML.T0024.001",)


def test_score_based_inversion_of_a_score_only_model(setup: Setup) -> None:
    _, other, recognizer, x, y = setup
    clf = _View(other, Capability.score_only())
    attack = MIFace(steps=60, samples=8)
    assert attack.resolve_method(clf) == "score"
    res = attack.infer(clf, [0, 3, 6, 9])
    assert res.queries == attack.planned_queries(clf, 4) == 4 * 60 * 2 * 8
    m = reconstruction_metrics(res, x, y, recognizer=recognizer)
    assert m.recognition_rate is not None and m.recognition_rate >= 0.75
    assert float(res.confidence.mean()) > 0.9
    # deterministic under the seed
    assert torch.equal(attack.infer(clf, [0, 3, 6, 9]).x, res.x)


def test_query_budget_and_capabilities(setup: Setup) -> None:
    _, other, _, _, _ = setup
    clf = _View(other, Capability.score_only(), budget=100)
    with pytest.raises(QueryBudgetExceeded):
        MIFace(steps=10, samples=5).infer(clf, [0, 1])  # needs 200
    assert clf.queries == 0
    assert MIFace(steps=10, samples=5).infer(clf, [0]).queries == 100
    with pytest.raises(CapabilityError, match="gradients"):
        MIFace(method="white-box").infer(clf, [0])
    with pytest.raises(CapabilityError):
        MIFace().infer(_View(other, Capability.LABELS), [0])


def test_bad_parameters_and_inputs(setup: Setup) -> None:
    clf = setup[0]
    for kwargs in ({"steps": 0}, {"method": "blind"}, {"loss": "mse"}, {"tv": -1.0}, {"init": "x"}):
        with pytest.raises(ConfigurationError):
            MIFace(**kwargs)
    with pytest.raises(InputError):
        MIFace().infer(clf, [10])
    with pytest.raises(InputError):
        MIFace().infer(clf, [])


def test_prob_loss_and_mode_restored(setup: Setup) -> None:
    clf, _, _, _, _ = setup
    net = clf.module
    assert isinstance(net, nn.Module)
    net.train()
    try:
        res = MIFace(steps=50, loss="prob", init="random").infer(clf, [1, 7])
        assert net.training
    finally:
        net.eval()
    assert bool((res.x >= 0).all() and (res.x <= 1).all())
    assert float(res.confidence.mean()) > 0.5
