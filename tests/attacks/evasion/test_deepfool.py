"""Closed-form and behavioural checks of DeepFool."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bastion.attacks.evasion import PGD
from bastion.attacks.evasion.deepfool import DeepFool
from bastion.errors import ConfigurationError, InputError
from bastion.models import TorchClassifier


def _linear(
    d: int, k: int, *, seed: int, bounds: tuple[float, float] = (-10.0, 10.0)
) -> tuple[TorchClassifier, torch.Tensor, torch.Tensor]:
    """``nn.Linear(d, k)`` with known weights ``W`` (k, d) and bias ``c`` (k,)."""
    gen = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, k)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(k, d, generator=gen))
        lin.bias.copy_(0.5 * torch.randn(k, generator=gen))
    for p in lin.parameters():
        p.requires_grad_(False)
    clf = TorchClassifier(lin, input_shape=(d,), num_classes=k, bounds=bounds)
    return clf, lin.weight.detach().clone(), lin.bias.detach().clone()


def _exact_distance(
    weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, dual: float
) -> torch.Tensor:
    """Minimal distance to leave the predicted class of a linear model (no box constraint).

    The union of the half-spaces ``z_k >= z_y`` is reached first at the nearest one, in the norm
    whose dual is ``dual`` (2 for L2, 1 for L∞): ``min_k |f_k| / ||w_k||_dual``.
    """
    z = x @ weight.T + bias
    y = z.argmax(1)
    f = z - z.gather(1, y[:, None])
    w = weight[None, :, :] - weight[y][:, None, :]
    dist = f.abs() / w.norm(p=dual, dim=2).clamp_min(1e-12)
    dist.scatter_(1, y[:, None], math.inf)
    return dist.amin(1)


def _points(d: int, n: int, *, seed: int) -> torch.Tensor:
    """``n`` points in [-1, 1]^d, well inside the bounds (-10, 10) so that clipping never bites."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=gen) * 2 - 1


@pytest.fixture(scope="module")
def pgd_budgets(digits_net: nn.Module, digits_split: tuple[torch.Tensor, ...]) -> dict[str, float]:
    """Per norm, the smallest radius on a grid at which PGD fools >= 95% of 64 digits."""
    _, _, x, y = digits_split
    clf = TorchClassifier(digits_net, input_shape=(1, 8, 8), num_classes=10)
    grids = {"l2": (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0), "linf": (0.05, 0.1, 0.15, 0.2, 0.3)}
    out: dict[str, float] = {}
    for norm, grid in grids.items():
        for eps in grid:
            res = PGD(norm=norm, eps=eps, steps=20, step_size=eps / 8).generate(clf, x[:64], y[:64])
            if res.success_rate >= 0.95:
                out[norm] = eps
                break
        else:
            pytest.fail(f"PGD-{norm} did not reach 95% success on digits on its grid")
    return out


@pytest.mark.parametrize(("norm", "dual"), [("l2", 2.0), ("linf", 1.0)])
def test_closed_form_on_a_linear_binary_model(norm: str, dual: float) -> None:
    clf, weight, bias = _linear(20, 2, seed=0)
    x = _points(20, 32, seed=1)
    exact = _exact_distance(weight, bias, x, dual)
    res = DeepFool(norm=norm, overshoot=0.0).generate(clf, x)
    assert bool(res.success.all())
    ratio = res.distances / exact
    assert float(ratio.min()) >= 1 - 1e-4
    assert float(ratio.max()) <= 1.01


@pytest.mark.parametrize(("norm", "dual"), [("l2", 2.0), ("linf", 1.0)])
def test_overshoot_scales_the_closed_form_answer(norm: str, dual: float) -> None:
    clf, weight, bias = _linear(20, 2, seed=2)
    x = _points(20, 32, seed=3)
    exact = _exact_distance(weight, bias, x, dual)
    res = DeepFool(norm=norm, overshoot=0.1).generate(clf, x)
    ratio = res.distances / exact
    assert bool(res.success.all())
    assert 1.1 - 1e-3 <= float(ratio.min()) and float(ratio.max()) <= 1.11


@pytest.mark.parametrize(("norm", "dual"), [("l2", 2.0), ("linf", 1.0)])
def test_closed_form_on_a_linear_multiclass_model(norm: str, dual: float) -> None:
    # with every class a candidate, the first linear step already reaches the nearest of the
    # half-spaces z_k >= z_y, which is the exact minimal perturbation of a linear model
    clf, weight, bias = _linear(12, 5, seed=4)
    x = _points(12, 32, seed=5)
    exact = _exact_distance(weight, bias, x, dual)
    res = DeepFool(norm=norm, overshoot=0.0, candidates=5).generate(clf, x)
    assert bool(res.success.all())
    ratio = res.distances / exact
    assert float(ratio.min()) >= 1 - 1e-4
    assert float(ratio.max()) <= 1.01


def test_fewer_candidates_cannot_beat_the_exact_answer() -> None:
    clf, weight, bias = _linear(12, 5, seed=6)
    x = _points(12, 32, seed=7)
    exact = _exact_distance(weight, bias, x, 2.0)
    res = DeepFool(overshoot=0.0, candidates=2).generate(clf, x)
    assert bool(res.success.all())
    assert bool((res.distances >= exact * (1 - 1e-4)).all())


@pytest.mark.parametrize(("norm", "dual"), [("l2", 2.0), ("linf", 1.0)])
def test_inputs_at_a_bound_are_left_out_of_the_linear_step(norm: str, dual: float) -> None:
    # w·x + b with half the coordinates at 0 where w < 0: those cannot move (the box is
    # [0, 1]), so the minimal perturbation lives on the free coordinates only, with distance
    # |f| / ||w_free||_dual; a box-aware step reaches it in one step (3 forward passes per input)
    gen = torch.Generator().manual_seed(9)
    d, n = 10, 16
    w = torch.randn(d, generator=gen).abs()
    w[::2] *= -1
    free = w > 0
    b = -0.42 * float(w[free].sum())
    lin = nn.Linear(d, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([torch.zeros(d), w]))
        lin.bias.copy_(torch.tensor([0.0, b]))
    clf = TorchClassifier(lin, input_shape=(d,), num_classes=2, bounds=(0.0, 1.0))
    x = torch.zeros(n, d)
    x[:, free] = 0.2 + 0.2 * torch.rand(n, int(free.sum()), generator=gen)
    f = x @ w + b
    assert bool((f < 0).all())
    exact = f.abs() / w[free].norm(p=dual)
    res = DeepFool(norm=norm, overshoot=0.0).generate(clf, x)
    assert bool(res.success.all())
    ratio = res.distances / exact
    assert float(ratio.min()) >= 1 - 1e-4 and float(ratio.max()) <= 1.01
    assert torch.equal(res.x_adv[:, ~free], x[:, ~free])
    assert res.queries == 3 * n


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_digits_success_and_norms(
    norm: str,
    digits_model: TorchClassifier,
    digits_split: tuple[torch.Tensor, ...],
    pgd_budgets: dict[str, float],
) -> None:
    _, _, x, y = digits_split
    x, y = x[:64], y[:64]
    res = DeepFool(norm=norm).generate(digits_model, x, y)
    assert res.success_rate >= 0.95
    median = res.median_norm
    assert median is not None and math.isfinite(median)
    assert 0 < median < pgd_budgets[norm]
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    pred = digits_model.predict(res.x_adv)
    assert torch.equal(pred != y, res.success)


def test_misclassified_samples_are_untouched_and_not_queried_again(
    digits_model: TorchClassifier, digits_split: tuple[torch.Tensor, ...]
) -> None:
    _, _, x, _ = digits_split
    x = x[:16]
    wrong = (digits_model.predict(x) + 1) % 10
    digits_model.reset_queries()
    res = DeepFool().generate(digits_model, x, wrong)
    assert torch.equal(res.x_adv, x)
    assert bool((res.distances == 0).all())
    assert res.queries == 16  # the one forward pass that finds them already fooled


def test_eps_projects_onto_the_ball(
    digits_model: TorchClassifier, digits_split: tuple[torch.Tensor, ...]
) -> None:
    _, _, x, y = digits_split
    res = DeepFool(norm="linf", eps=0.02).generate(digits_model, x[:32], y[:32])
    assert float(res.distances.max()) <= 0.02 + 1e-6
    assert res.success_rate < 0.5  # far below the median DeepFool L∞ norm on digits


def test_deterministic(
    digits_model: TorchClassifier, digits_split: tuple[torch.Tensor, ...]
) -> None:
    _, _, x, y = digits_split
    a = DeepFool(steps=10).generate(digits_model, x[:32], y[:32])
    b = DeepFool(steps=10).generate(digits_model, x[:32], y[:32])
    assert torch.equal(a.x_adv, b.x_adv)
    assert a.queries == b.queries > 0


def test_contract() -> None:
    attack = DeepFool()
    assert attack.name == "deepfool"
    assert attack.minimum_norm and not attack.supports_targeted
    assert attack.eps is None and attack.get_params()["norm"] == "l2"


def test_untargeted_only() -> None:
    clf, _, _ = _linear(4, 3, seed=8)
    with pytest.raises(InputError, match="untargeted"):
        DeepFool().generate(clf, torch.zeros(2, 4), target=torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError):
        DeepFool(targeted=True)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"norm": "l1"}, "unknown norm"),
        ({"steps": 0}, "steps must be a positive integer"),
        ({"steps": 2.0}, "steps must be a positive integer"),
        ({"overshoot": -0.1}, "overshoot must be a finite number >= 0"),
        ({"overshoot": float("nan")}, "overshoot must be a finite number >= 0"),
        ({"candidates": 1}, "candidates must be an integer >= 2"),
        ({"candidates": True}, "candidates must be an integer >= 2"),
        ({"eps": float("inf")}, "eps must be a finite number >= 0"),
        ({"seed": "a"}, "seed must be an int or None"),
    ],
)
def test_bad_parameters_raise_configuration_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        DeepFool(**kwargs)
