"""Closed-form and behavioural checks of FGSM and PGD."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bastion.attacks.evasion import FGSM, PGD
from bastion.errors import CapabilityError, ConfigurationError, InputError
from bastion.models import BaseClassifier, Capability, TorchClassifier


def _linear(
    w: torch.Tensor, b: float = 0.0, bounds: tuple[float, float] = (-10.0, 10.0)
) -> TorchClassifier:
    """Binary linear classifier: logits [0, w·x + b]."""
    lin = nn.Linear(w.numel(), 2)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([torch.zeros_like(w), w]))
        lin.bias.copy_(torch.tensor([0.0, b]))
    return TorchClassifier(lin, input_shape=(w.numel(),), num_classes=2, bounds=bounds)


def test_fgsm_on_a_linear_model_moves_by_eps_times_sign_of_w() -> None:
    torch.manual_seed(0)
    w = torch.randn(20)
    clf = _linear(w)
    x = torch.rand(32, 20) * 2 - 1
    y = torch.ones(32, dtype=torch.long)  # pushing away from class 1 means along -w
    res = FGSM(eps=0.05).generate(clf, x, y)
    expected = x - 0.05 * w.sign()
    assert torch.allclose(res.x_adv, expected, atol=1e-6)
    res_l2 = FGSM(norm="l2", eps=0.5).generate(clf, x, y)
    assert torch.allclose(res_l2.x_adv, x - 0.5 * w / w.norm(), atol=1e-5)


def test_targeted_fgsm_moves_towards_the_target() -> None:
    torch.manual_seed(1)
    w = torch.randn(10)
    clf = _linear(w)
    x = torch.rand(8, 10)
    y = torch.zeros(8, dtype=torch.long)
    res = FGSM(eps=0.1, targeted=True).generate(clf, x, y, target=torch.ones(8, dtype=torch.long))
    assert torch.allclose(res.x_adv, x + 0.1 * w.sign(), atol=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_stays_in_the_eps_ball_and_the_bounds(
    digits_model: TorchClassifier, digits_split, norm: str
) -> None:
    _, _, x, y = digits_split
    eps = 0.3 if norm == "linf" else 1.5
    res = PGD(norm=norm, eps=eps, steps=10, step_size=eps / 3).generate(
        digits_model, x[:200], y[:200]
    )
    delta = (res.x_adv - x[:200]).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert bool((size <= eps + 1e-5).all())
    assert res.x_adv.min() >= 0.0 and res.x_adv.max() <= 1.0
    assert res.robust_accuracy < res.clean_accuracy - 0.3


def test_pgd_is_deterministic_under_a_seed_and_varies_across_seeds(
    digits_model, digits_split
) -> None:
    _, _, x, y = digits_split
    a = PGD(eps=0.1, steps=3, seed=7).generate(digits_model, x[:64], y[:64])
    b = PGD(eps=0.1, steps=3, seed=7).generate(digits_model, x[:64], y[:64])
    c = PGD(eps=0.1, steps=3, seed=8).generate(digits_model, x[:64], y[:64])
    assert torch.equal(a.x_adv, b.x_adv)
    assert not torch.equal(a.x_adv, c.x_adv)


def test_pgd_restarts_never_hurt(digits_model, digits_split) -> None:
    _, _, x, y = digits_split
    one = PGD(eps=0.08, steps=5, restarts=1).generate(digits_model, x[:200], y[:200])
    three = PGD(eps=0.08, steps=5, restarts=3).generate(digits_model, x[:200], y[:200])
    assert three.robust_accuracy <= one.robust_accuracy


def test_targeted_pgd_reaches_the_target(digits_model, digits_split) -> None:
    _, _, x, y = digits_split
    target = (y[:100] + 1) % 10
    res = PGD(eps=0.5, steps=30, step_size=0.05, targeted=True).generate(
        digits_model, x[:100], y[:100], target=target
    )
    assert float((res.adv_pred == target).float().mean()) > 0.9
    assert res.success_rate > 0.9


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eps": -0.1}, "eps"),
        ({"eps": float("nan")}, "eps"),
        ({"eps": 0.1, "norm": "l7"}, "norm"),
        ({"eps": 0.1, "steps": 0}, "steps"),
        ({"eps": 0.1, "restarts": 1.5}, "restarts"),
        ({"eps": 0.1, "step_size": -1.0}, "step_size"),
        ({"eps": 0.1, "batch_size": 0}, "batch_size"),
        ({"eps": 0.1, "seed": "x"}, "seed"),
    ],
)
def test_pgd_rejects_bad_parameters(kwargs, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        PGD(**kwargs)


def test_generate_rejects_bad_inputs(digits_model: TorchClassifier, digits_split) -> None:
    _, _, x, y = digits_split
    attack = PGD(eps=0.1, steps=1)
    with pytest.raises(InputError, match="shape"):
        attack.generate(digits_model, x[:4].reshape(4, 64), y[:4])
    with pytest.raises(InputError, match="outside the model's bounds"):
        attack.generate(digits_model, x[:4] * 3, y[:4])
    with pytest.raises(InputError, match="labels"):
        attack.generate(digits_model, x[:4], torch.tensor([0, 1, 2, 11]))
    with pytest.raises(InputError, match="target"):
        attack.generate(digits_model, x[:4], y[:4], target=y[:4])
    with pytest.raises(InputError, match="needs target"):
        PGD(eps=0.1, targeted=True).generate(digits_model, x[:4], y[:4])
    with pytest.raises(InputError, match="NaN"):
        bad = x[:4].clone()
        bad[0, 0, 0, 0] = float("nan")
        attack.generate(digits_model, bad, y[:4])


def test_gradient_attacks_refuse_score_only_models() -> None:
    class ScoresOnly(BaseClassifier):
        def __init__(self) -> None:
            super().__init__(input_shape=(3,), num_classes=2, capabilities=Capability.score_only())

        def _logits(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([x.sum(1), -x.sum(1)], 1)

    with pytest.raises(CapabilityError, match="gradients"):
        PGD(eps=0.1).generate(ScoresOnly(), torch.rand(2, 3))


def test_result_serialises_without_loss(digits_model, digits_split) -> None:
    from bastion.attacks.evasion import EvasionResult

    _, _, x, y = digits_split
    res = PGD(eps=0.1, steps=2).generate(digits_model, x[:10], y[:10])
    back = EvasionResult.from_dict(res.to_dict(include_inputs=True))
    assert torch.equal(back.x_adv, res.x_adv)
    assert torch.equal(back.success, res.success)
    assert back.summary() == res.summary()


def test_early_stopping_keeps_successes_and_saves_queries(digits_model, digits_split) -> None:
    _, _, x, y = digits_split
    x, y = x[:200], y[:200]
    kwargs = {"eps": 0.2, "steps": 20, "step_size": 0.02, "random_start": False}
    full = PGD(early_stop=False, **kwargs).generate(digits_model, x, y)
    assert full.queries == 200 * 20  # every row stepped every time
    fast = PGD(**kwargs).generate(digits_model, x, y)
    assert fast.queries < full.queries / 2
    assert fast.robust_accuracy <= full.robust_accuracy
    # a sample fooled early is frozen at an adversarial point, never undone by later steps
    assert bool((fast.success | ~full.success).all())


def test_restarts_attack_only_the_samples_still_standing(digits_model, digits_split) -> None:
    _, _, x, y = digits_split
    x, y = x[:100], y[:100]
    one = PGD(eps=0.05, steps=5, restarts=1, early_stop=False).generate(digits_model, x, y)
    two = PGD(eps=0.05, steps=5, restarts=2, early_stop=False).generate(digits_model, x, y)
    robust_after_first = int((~one.success).sum())
    # run 1: 5 steps + 1 check on all rows; run 2: the same on the rows run 1 did not fool
    assert two.queries == 100 * 6 + robust_after_first * 6
    assert two.robust_accuracy <= one.robust_accuracy
