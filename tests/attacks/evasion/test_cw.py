"""Closed-form and behavioural checks of the Carlini–Wagner L2 attack."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bastion.attacks.evasion import PGD
from bastion.attacks.evasion.cw import CarliniWagnerL2
from bastion.errors import ConfigurationError, InputError
from bastion.models import TorchClassifier


def _linear_binary(
    d: int, *, seed: int, bounds: tuple[float, float] = (-10.0, 10.0)
) -> tuple[TorchClassifier, torch.Tensor, float]:
    """``nn.Linear(d, 2)`` with known weights; returns the classifier, ``w = w1 - w0`` and ``b``."""
    gen = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(2, d, generator=gen))
        lin.bias.copy_(torch.tensor([0.3, -0.2]))
    for p in lin.parameters():
        p.requires_grad_(False)
    w = lin.weight[1] - lin.weight[0]
    b = float(lin.bias[1] - lin.bias[0])
    clf = TorchClassifier(lin, input_shape=(d,), num_classes=2, bounds=bounds)
    return clf, w, b


def _inner_points(
    w: torch.Tensor, b: float, n: int, *, seed: int, min_dist: float = 0.2
) -> torch.Tensor:
    """Points in [-1, 1]^d whose distance to the boundary is at least ``min_dist``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(8 * n, w.numel(), generator=gen) * 2 - 1
    keep = (x @ w + b).abs() / w.norm() >= min_dist
    return x[keep][:n]


@pytest.fixture(scope="module")
def pgd_l2_budget(digits_net: nn.Module, digits_split: tuple[torch.Tensor, ...]) -> float:
    """The smallest L2 radius on a grid at which PGD-L2 fools >= 95% of 64 digits."""
    _, _, x, y = digits_split
    clf = TorchClassifier(digits_net, input_shape=(1, 8, 8), num_classes=10)
    for eps in (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0):
        res = PGD(norm="l2", eps=eps, steps=20, step_size=eps / 8).generate(clf, x[:64], y[:64])
        if res.success_rate >= 0.95:
            return eps
    pytest.fail("PGD-L2 did not reach 95% success on digits within eps = 3")


def test_closed_form_minimal_l2_distance_on_a_linear_binary_model() -> None:
    clf, w, b = _linear_binary(10, seed=0)
    x = _inner_points(w, b, 12, seed=1)
    assert x.shape[0] == 12
    exact = (x @ w + b).abs() / w.norm()
    res = CarliniWagnerL2().generate(clf, x)
    assert bool(res.success.all())
    ratio = res.distances / exact
    assert float(ratio.min()) >= 1 - 1e-4  # nothing crosses closer than the boundary
    assert float(ratio.max()) <= 1.01


def test_confidence_moves_the_closed_form_answer_by_kappa_over_norm_w() -> None:
    clf, w, b = _linear_binary(10, seed=2)
    x = _inner_points(w, b, 8, seed=3)
    kappa = 2.0
    res = CarliniWagnerL2(confidence=kappa, steps=300, binary_search_steps=6).generate(clf, x)
    exact = ((x @ w + b).abs() + kappa) / w.norm()
    assert bool(res.success.all())
    ratio = res.distances / exact
    assert 1 - 1e-4 <= float(ratio.min()) and float(ratio.max()) <= 1.01
    z = clf.logits(res.x_adv)
    y = res.y
    gap = z.gather(1, (1 - y)[:, None]).squeeze(1) - z.gather(1, y[:, None]).squeeze(1)
    assert float(gap.min()) >= kappa - 1e-3


def test_bounds_come_from_the_model_not_from_unit_range() -> None:
    # shifted bounds: the tanh change of variables must map onto [2, 5], not [0, 1]
    clf, w, b = _linear_binary(6, seed=4, bounds=(2.0, 5.0))
    gen = torch.Generator().manual_seed(5)
    x = 3.0 + torch.rand(16, 6, generator=gen)
    res = CarliniWagnerL2(steps=200, binary_search_steps=6, c=1.0).generate(clf, x)
    assert float(res.x_adv.min()) >= 2.0 and float(res.x_adv.max()) <= 5.0
    # every sample whose boundary lies inside the box is reached
    exact = (x @ w + b).abs() / w.norm()
    ok = res.success
    assert float(ok.float().mean()) >= 0.5
    assert bool((res.distances[ok] >= exact[ok] * (1 - 1e-4)).all())


def test_digits_untargeted_success_and_norms(
    digits_model: TorchClassifier, digits_split: tuple[torch.Tensor, ...], pgd_l2_budget: float
) -> None:
    _, _, x, y = digits_split
    x, y = x[:64], y[:64]
    # a short run: c starts high enough and a larger lr lets 50 steps travel far enough
    attack = CarliniWagnerL2(steps=50, binary_search_steps=4, c=1.0, lr=0.05)
    res = attack.generate(digits_model, x, y)
    assert res.success_rate >= 0.95
    median = res.median_norm
    assert median is not None and math.isfinite(median)
    assert 0 < median < pgd_l2_budget
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    # a success is a real misclassification of the returned input
    pred = digits_model.predict(res.x_adv)
    assert torch.equal(pred != y, res.success)


def test_digits_targeted_reaches_the_target(
    digits_model: TorchClassifier, digits_split: tuple[torch.Tensor, ...]
) -> None:
    _, _, x, y = digits_split
    x, y = x[:32], y[:32]
    target = (y + 3) % 10
    # saturated background pixels move slowly in tanh space: a larger lr lets 100 steps travel
    attack = CarliniWagnerL2(targeted=True, steps=100, binary_search_steps=5, c=1.0, lr=0.05)
    res = attack.generate(digits_model, x, y, target=target)
    assert res.targeted
    assert float((res.adv_pred == target).float().mean()) >= 0.9
    assert torch.equal(res.success, res.adv_pred == target)


def test_samples_never_fooled_are_returned_unchanged(
    digits_model: TorchClassifier, digits_split: tuple[torch.Tensor, ...]
) -> None:
    _, _, x, y = digits_split
    x, y = x[:32], y[:32]
    res = CarliniWagnerL2(steps=3, binary_search_steps=1, c=1e-3).generate(digits_model, x, y)
    failed = ~res.success & res.clean_correct
    assert bool(failed.any())
    assert torch.equal(res.x_adv[failed], x[failed])
    assert bool((res.distances[failed] == 0).all())


def test_eps_projects_onto_the_l2_ball(
    digits_model: TorchClassifier, digits_split: tuple[torch.Tensor, ...]
) -> None:
    _, _, x, y = digits_split
    res = CarliniWagnerL2(steps=50, binary_search_steps=3, eps=0.3).generate(
        digits_model, x[:32], y[:32]
    )
    assert res.eps == 0.3
    assert float(res.distances.max()) <= 0.3 + 1e-5


def test_deterministic(
    digits_model: TorchClassifier, digits_split: tuple[torch.Tensor, ...]
) -> None:
    _, _, x, y = digits_split
    attack = CarliniWagnerL2(steps=30, binary_search_steps=3)
    a = attack.generate(digits_model, x[:16], y[:16])
    b = CarliniWagnerL2(steps=30, binary_search_steps=3).generate(digits_model, x[:16], y[:16])
    assert torch.equal(a.x_adv, b.x_adv)
    assert a.queries == b.queries > 0


def test_minimum_norm_contract() -> None:
    attack = CarliniWagnerL2()
    assert attack.minimum_norm and attack.eps is None
    assert attack.name == "cw"
    assert attack.get_params()["norm"] == "l2"
    assert "CarliniWagnerL2(" in repr(attack)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"c": 0.0}, "c must be a positive number"),
        ({"c": -1.0}, "c must be a positive number"),
        ({"lr": float("nan")}, "lr must be a positive number"),
        ({"steps": 0}, "steps must be a positive integer"),
        ({"binary_search_steps": 2.5}, "binary_search_steps must be a positive integer"),
        ({"confidence": -0.5}, "confidence must be a finite number >= 0"),
        ({"confidence": float("inf")}, "confidence must be a finite number >= 0"),
        ({"eps": -1.0}, "eps must be a finite number >= 0"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
    ],
)
def test_bad_parameters_raise_configuration_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        CarliniWagnerL2(**kwargs)


def test_targeted_needs_target_labels() -> None:
    clf, _, _ = _linear_binary(4, seed=6)
    with pytest.raises(InputError, match="needs target"):
        CarliniWagnerL2(targeted=True, steps=1).generate(clf, torch.zeros(2, 4))
