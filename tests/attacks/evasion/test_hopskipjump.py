"""HopSkipJump: closed-form distances on a linear model, convergence with queries, label-only
use and a hard per-sample query budget."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from bastion.attacks.evasion._hsj import Oracle, binary_search, blend, thresholds
from bastion.attacks.evasion.hopskipjump import HopSkipJump
from bastion.attacks.evasion.square import Square
from bastion.errors import CapabilityError, ConfigurationError, QueryBudgetExceeded
from bastion.models import BaseClassifier, Capability, TorchClassifier
from bastion.threat import Norm


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest single-threaded, above all on a shared, busy CPU."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


class LabelsOnly(BaseClassifier):
    """Only the predicted label of a torch net; records whether a gradient was ever possible."""

    def __init__(
        self,
        net: nn.Module,
        input_shape: tuple[int, ...] = (1, 8, 8),
        num_classes: int = 10,
        *,
        query_budget: int | None = None,
    ) -> None:
        super().__init__(
            input_shape=input_shape,
            num_classes=num_classes,
            capabilities=Capability.LABELS,
            query_budget=query_budget,
        )
        self.net = net
        self.grad_seen = False

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        raise CapabilityError("this model returns labels only")

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        self.grad_seen |= x.requires_grad
        return self.net(x).argmax(dim=1)


def _linear_binary(
    norm: str, d: int = 20, n: int = 20
) -> tuple[TorchClassifier, torch.Tensor, torch.Tensor]:
    """A 2-class linear model ``w.x + b``, points whose closest boundary point lies inside
    [0, 1]^d, and their exact minimal distances: ``|w.x + b| / ||w||_2`` in L2 and
    ``|w.x + b| / ||w||_1`` in L∞ (the dual norms)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(d, generator=g)
    b = -(0.5 * w).sum()
    layer = nn.Linear(d, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.stack([torch.zeros(d), w]))
        layer.bias.copy_(torch.tensor([0.0, float(b)]))
        layer.requires_grad_(False)
    x = 0.3 + 0.4 * torch.rand(10 * n, d, generator=g)
    score = x @ w + b
    if norm == "l2":
        exact = score.abs() / w.norm()
        foot = x - (score / (w @ w))[:, None] * w
    else:
        exact = score.abs() / w.abs().sum()
        foot = x - (score.sign()[:, None] * w.sign()[None, :]) * exact[:, None]
    inside = ((foot >= 0) & (foot <= 1)).all(dim=1)
    clf = TorchClassifier(layer, input_shape=(d,), num_classes=2)
    return clf, x[inside][:n], exact[inside][:n]


@pytest.fixture()
def batch(digits_split: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    _, _, x_test, y_test = digits_split
    return x_test[:30], y_test[:30]


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_linear_binary_reaches_the_closed_form_distance(norm: str) -> None:
    clf, x, exact = _linear_binary(norm)
    assert x.shape[0] == 20
    res = HopSkipJump(norm=norm, max_queries=1000).generate(clf, x)
    assert res.success_rate == 1.0
    ratio = res.distances / exact
    assert float(ratio.min()) >= 1 - 1e-3  # no adversarial point is closer than the optimum
    assert float(ratio.median()) <= 1.05
    assert float(ratio.max()) <= 1.15


def test_median_norm_decreases_with_more_queries(digits_net: nn.Module, batch) -> None:
    x, y = batch
    norms = []
    for budget in (150, 600, 2000):
        res = HopSkipJump(norm="l2", max_queries=budget).generate(LabelsOnly(digits_net), x, y)
        assert res.success_rate == 1.0
        norms.append(res.median_norm)
    assert norms[0] > norms[1] > norms[2]
    assert norms[2] < 0.8 * norms[0]


def test_linf_on_digits(digits_model: TorchClassifier, batch) -> None:
    x, y = batch
    res = HopSkipJump(norm="linf", max_queries=1000).generate(digits_model, x, y)
    assert res.success_rate == 1.0
    assert res.median_norm is not None and res.median_norm < 0.2
    # the L∞ distances reported are those of the returned points
    assert torch.allclose(res.distances, (res.x_adv - x).abs().flatten(1).amax(1))


def test_label_only_classifier_and_no_gradients(digits_net: nn.Module, batch) -> None:
    x, y = batch
    clf = LabelsOnly(digits_net)
    with pytest.raises(CapabilityError):
        Square(eps=0.3).generate(clf, x, y)  # the wrapper really has no scores
    res = HopSkipJump(norm="l2", max_queries=400).generate(clf, x, y)
    assert res.success_rate == 1.0
    assert not clf.grad_seen


def test_queries_never_exceed_the_per_sample_budget(digits_net: nn.Module, batch) -> None:
    x, y = batch
    clf = LabelsOnly(digits_net)
    attack = HopSkipJump(norm="l2", max_queries=333)
    res = attack.generate(clf, x, y)
    per_sample = attack.queries_
    assert per_sample is not None and per_sample.shape == (30,)
    assert int(per_sample.sum()) == res.queries == clf.queries
    assert int(per_sample.max()) <= 333
    assert int(per_sample.min()) >= 333 - 20  # the budget is used, not left idle
    # one sample at a time against a hard budget of exactly max_queries: never refused
    for i in range(3):
        single = LabelsOnly(digits_net, query_budget=333)
        HopSkipJump(norm="linf", max_queries=333).generate(single, x[i : i + 1], y[i : i + 1])
        assert single.queries <= 333
    with pytest.raises(QueryBudgetExceeded):
        HopSkipJump(norm="l2", max_queries=334).generate(
            LabelsOnly(digits_net, query_budget=333), x[:1], y[:1]
        )


def test_early_stop_within_eps_saves_queries(digits_net: nn.Module, batch) -> None:
    x, y = batch
    attack = HopSkipJump(norm="l2", eps=3.0, early_stop=True, max_queries=2000)
    res = attack.generate(LabelsOnly(digits_net), x, y)
    assert res.success_rate == 1.0
    assert float(res.distances.max()) <= 3.0 + 1e-5
    assert float(attack.queries_.float().mean()) < 500
    # without early stopping eps only projects: the distances keep shrinking below it
    full = HopSkipJump(norm="l2", eps=3.0, max_queries=2000)
    res_full = full.generate(LabelsOnly(digits_net), x, y)
    assert int(full.queries_.min()) > 1900
    assert res_full.median_norm < res.median_norm


def test_eps_projects_and_counts_failures(digits_net: nn.Module, batch) -> None:
    """At a tiny eps the projected points are no longer adversarial: failures, not successes."""
    x, y = batch
    res = HopSkipJump(norm="l2", eps=0.05, max_queries=300).generate(LabelsOnly(digits_net), x, y)
    assert float(res.distances.max()) <= 0.05 + 1e-6
    assert res.success_rate < 0.2


def test_steps_cap_the_iterations(digits_net: nn.Module, batch) -> None:
    x, y = batch
    one = HopSkipJump(norm="l2", max_queries=None, steps=1)
    one.generate(LabelsOnly(digits_net), x, y)
    three = HopSkipJump(norm="l2", max_queries=None, steps=3)
    three.generate(LabelsOnly(digits_net), x, y)
    # one iteration: at most 100 starts, 10+10 bisection steps, 100 probes, 25 step checks
    assert int(one.queries_.max()) <= 100 + 20 + 100 + 25
    assert bool((three.queries_ > one.queries_ + 100).all())


def test_targeted_reaches_the_target(digits_net: nn.Module, digits_split, batch) -> None:
    x_train, _, _, _ = digits_split
    x, y = batch
    target = (y + 3) % 10
    attack = HopSkipJump(norm="l2", targeted=True, max_queries=800, starting_points=x_train[:300])
    assert attack.get_params()["n_starting_points"] == 300
    res = attack.generate(LabelsOnly(digits_net), x, y, target=target)
    assert res.success_rate == 1.0
    assert bool((res.adv_pred == target).all())
    untargeted = HopSkipJump(norm="l2", max_queries=800).generate(LabelsOnly(digits_net), x, y)
    assert res.median_norm > untargeted.median_norm  # a given class is farther than the nearest


def test_deterministic_under_seed(digits_model: TorchClassifier, batch) -> None:
    x, y = batch[0][:10], batch[1][:10]
    a = HopSkipJump(norm="l2", max_queries=300, seed=5).generate(digits_model, x, y)
    b = HopSkipJump(norm="l2", max_queries=300, seed=5).generate(digits_model, x, y)
    c = HopSkipJump(norm="l2", max_queries=300, seed=6).generate(digits_model, x, y)
    assert torch.equal(a.x_adv, b.x_adv)
    assert not torch.equal(a.x_adv, c.x_adv)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"norm": "l1"},
        {"max_queries": None, "steps": None},
        {"max_queries": 0},
        {"steps": 0},
        {"max_num_evals": 0},
        {"init_num_evals": -1},
        {"init_size": 0},
        {"gamma": 0.0},
        {"gamma": float("inf")},
        {"eps": -1.0},
        {"starting_points": [[0.0]]},
        {"starting_points": torch.zeros(0, 4)},
        {"starting_points": torch.full((2, 4), float("nan"))},
        {"batch_size": 0},
    ],
)
def test_bad_parameters_raise(kwargs: dict) -> None:
    with pytest.raises(ConfigurationError):
        HopSkipJump(**kwargs)


def test_starting_points_of_the_wrong_shape_are_refused(
    digits_model: TorchClassifier, batch
) -> None:
    x, y = batch
    attack = HopSkipJump(max_queries=50, starting_points=torch.rand(5, 64))
    with pytest.raises(ConfigurationError, match="starting_points"):
        attack.generate(digits_model, x, y)


def test_minimum_norm_contract() -> None:
    assert HopSkipJump.minimum_norm and HopSkipJump().eps is None
    assert HopSkipJump.requires == Capability.LABELS
    assert HopSkipJump().norm is Norm.L2


def test_binary_search_finds_a_known_boundary() -> None:
    """A threshold model on the first feature: class 1 when x0 > 0.6. From x0 = 0.2 towards
    x0 = 1.0 the boundary is at alpha = 0.5 (L2) or radius 0.4 (L∞)."""
    layer = nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0, 0, 0], [1.0, 0, 0]]))
        layer.bias.copy_(torch.tensor([0.0, -0.6]))
    clf = TorchClassifier(layer, input_shape=(3,), num_classes=2)
    x = torch.tensor([[0.2, 0.5, 0.5]])
    x_adv = torch.tensor([[1.0, 0.5, 0.5]])
    for norm in (Norm.L2, Norm.LINF):
        oracle = Oracle(clf, torch.zeros(1, dtype=torch.long), targeted=False, budget=None)
        theta = thresholds(3, 0.01, norm)  # a tight tolerance
        before = clf.queries
        out = binary_search(oracle, torch.arange(1), x, x_adv, norm, theta)
        assert float(out[0, 0]) == pytest.approx(0.6, abs=0.01)
        assert float(out[0, 0]) > 0.6  # the adversarial side
        assert int(oracle.spent[0]) == clf.queries - before > 0
    assert torch.equal(blend(x, x_adv, torch.tensor([0.0]), Norm.L2), x)
    assert torch.equal(blend(x, x_adv, torch.tensor([0.8]), Norm.LINF), x_adv)


def test_params_rebuild_the_attack() -> None:
    attack = HopSkipJump(norm="linf", max_queries=77, steps=5, gamma=2.0, eps=0.1, seed=1)
    params = attack.get_params()
    assert params["n_starting_points"] == 0
    params.pop("n_starting_points")
    assert repr(HopSkipJump(**params)) == repr(attack)
    assert params["norm"] == "linf" and params["max_queries"] == 77


class _ViewNet(nn.Module):
    """A convolutional net that flattens with ``.view`` (fails on channels-last input)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.fc(h.view(h.shape[0], -1))


def _conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),
    ).eval()


def test_oracle_feeds_conv_nets_channels_last_with_the_same_decisions() -> None:
    """A CPU conv net gets its queries channels-last (one channel included: the channel stride
    is 1, so the first convolution's output is channels-last too) and answers exactly as in
    the caller's layout; a net that cannot take it (``.view``) keeps the caller's layout."""
    net = _conv_net()
    seen: list[torch.Tensor] = []
    net[0].register_forward_hook(lambda m, a, out: seen.append(out))
    clf = TorchClassifier(net, input_shape=(1, 8, 8), num_classes=10)
    x = torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 10, (300,), generator=torch.Generator().manual_seed(2))
    oracle = Oracle(clf, labels, targeted=False, budget=None)
    got = oracle(x, torch.arange(300))
    assert seen[-1].is_contiguous(memory_format=torch.channels_last)
    assert not seen[-1].is_contiguous()
    with torch.no_grad():
        expected = net(x).argmax(1) != labels
    assert torch.equal(got, expected)
    assert int(oracle.spent.sum()) == 300

    view_clf = TorchClassifier(_ViewNet().eval(), input_shape=(1, 8, 8), num_classes=10)
    view_oracle = Oracle(view_clf, labels, targeted=False, budget=None)
    with torch.no_grad():
        expected = view_clf.module(x).argmax(1) != labels
    assert torch.equal(view_oracle(x, torch.arange(300)), expected)


def test_hopskipjump_on_a_conv_net_matches_the_caller_layout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The layout changes speed only: the same seed gives the same adversarial examples with
    the channels-last queries as with the caller's layout."""
    import bastion.attacks.evasion._hsj as hsj

    clf = TorchClassifier(_conv_net(), input_shape=(1, 8, 8), num_classes=10)
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    y = clf.predict(x)
    attack = HopSkipJump(max_queries=300, seed=0)
    fast = attack.generate(clf, x, y).x_adv
    monkeypatch.setattr(hsj, "_preferred_layout", lambda c, p: torch.contiguous_format)
    plain = attack.generate(clf, x, y).x_adv
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=0)
