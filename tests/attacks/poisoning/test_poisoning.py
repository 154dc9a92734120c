"""Poisoning generators: rates, masks, labels, triggers, validation, determinism."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bastion.attacks.poisoning import (
    BadNets,
    Blend,
    CleanLabel,
    LabelFlip,
    Trigger,
    attack_success_rate,
)
from bastion.errors import ConfigurationError, InputError
from bastion.models import TorchClassifier


def _data(n: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 8, 8, generator=g) * 0.5, torch.arange(n) % 10


def test_random_label_flip_changes_exactly_the_masked_labels() -> None:
    x, y = _data()
    res = LabelFlip(rate=0.1, seed=3).poison(x, y)
    assert res.n_poisoned == 20 and res.rate == pytest.approx(0.1)
    assert bool((res.y[res.mask] != y[res.mask]).all())
    assert bool((res.y[~res.mask] == y[~res.mask]).all())
    assert torch.equal(res.x, x) and torch.equal(res.y_original, y)
    assert int(res.y.max()) <= 9 and int(res.y.min()) >= 0


def test_targeted_label_flip_follows_the_pairs() -> None:
    x, y = _data()
    res = LabelFlip(rate=0.05, pairs={1: 7, 2: 7}).poison(x, y)
    assert set(y[res.mask].tolist()) <= {1, 2}
    assert set(res.y[res.mask].tolist()) == {7}
    assert res.target_class == 7
    with pytest.raises(InputError, match="only 20"):
        LabelFlip(rate=0.25, pairs={1: 7}).poison(x, y)


def test_badnets_stamps_the_patch_and_relabels() -> None:
    x, y = _data()
    attack = BadNets(target_class=4, rate=0.1, patch_size=2, pattern="solid", seed=0)
    res = attack.poison(x, y)
    assert res.n_poisoned == 20
    assert bool((y[res.mask] != 4).all()) and bool((res.y[res.mask] == 4).all())
    assert bool((res.x[res.mask][..., -2:, -2:] == 1.0).all())
    # everything outside the patch and outside the mask is untouched
    assert torch.equal(res.x[res.mask][..., :6, :], x[res.mask][..., :6, :])
    assert torch.equal(res.x[~res.mask], x[~res.mask])
    assert res.trigger is not None and res.trigger.kind == "patch"
    assert torch.equal(attack.apply_trigger(x[:3]), res.trigger.apply(x[:3]))


def test_blend_mixes_the_pattern_with_alpha() -> None:
    x, y = _data()
    attack = Blend(target_class=0, rate=0.1, alpha=0.25, seed=0)
    res = attack.poison(x, y)
    trig = attack.trigger((1, 8, 8))
    i = int(res.indices[0])
    expected = 0.75 * x[i] + 0.25 * trig.pattern
    assert torch.allclose(res.x[i], expected, atol=1e-6)
    custom = Blend(target_class=0, rate=0.1, pattern=torch.ones(1, 8, 8), alpha=0.5)
    assert torch.allclose(
        custom.apply_trigger(torch.zeros(1, 1, 8, 8)), torch.full((1, 1, 8, 8), 0.5)
    )


def test_poison_is_deterministic_under_the_seed() -> None:
    x, y = _data()
    a = BadNets(target_class=1, rate=0.1, seed=5).poison(x, y)
    b = BadNets(target_class=1, rate=0.1, seed=5).poison(x, y)
    c = BadNets(target_class=1, rate=0.1, seed=6).poison(x, y)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.x, b.x)
    assert not torch.equal(a.mask, c.mask)


def test_clean_label_keeps_labels_and_stays_in_budget() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    clf = TorchClassifier(net, input_shape=(1, 8, 8), num_classes=10)
    x, y = _data()
    attack = CleanLabel(surrogate=clf, target_class=3, rate=0.05, eps=0.1, steps=5)
    res = attack.poison(x, y)
    assert res.n_poisoned == 10 and torch.equal(res.y, y)
    assert bool((y[res.mask] == 3).all())
    outside = torch.ones(1, 8, 8, dtype=torch.bool)
    outside[..., -3:, -3:] = False
    diff = (res.x[res.mask] - x[res.mask])[:, outside]
    assert float(diff.abs().max()) <= 0.1 + 1e-5
    assert float(diff.abs().max()) > 0.0
    assert 0.0 <= res.extra["surrogate_fooled"] <= 1.0


@pytest.mark.parametrize(
    "make",
    [
        lambda: LabelFlip(rate=0.0),
        lambda: LabelFlip(rate=1.5),
        lambda: LabelFlip(rate=0.1, pairs={1: 1}),
        lambda: BadNets(target_class=-1, rate=0.1),
        lambda: BadNets(target_class=0, rate=0.1, location="middle"),
        lambda: BadNets(target_class=0, rate=0.1, source_classes=[0, 1]),
        lambda: Blend(target_class=0, rate=0.1, alpha=0.0),
        lambda: Trigger(kind="x", pattern=torch.ones(2), mask=torch.ones(3)),
    ],
)
def test_bad_parameters_are_rejected(make: object) -> None:
    with pytest.raises(ConfigurationError):
        make()  # type: ignore[operator]


def test_bad_inputs_are_rejected() -> None:
    x, y = _data()
    with pytest.raises(InputError, match="bounds"):
        BadNets(target_class=0, rate=0.1).poison(x + 2, y)
    with pytest.raises(InputError):
        BadNets(target_class=12, rate=0.1).poison(x, y)
    with pytest.raises(InputError, match="labels"):
        LabelFlip(rate=0.1).poison(x, y[:10])


def test_attack_success_rate_counts_target_predictions() -> None:
    lin = nn.Linear(64, 3)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[2, -1] = 10.0  # the bottom-right pixel votes for class 2
        lin.bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    net = nn.Sequential(nn.Flatten(), lin)
    attack = BadNets(target_class=2, rate=0.1, patch_size=1, pattern="solid")
    x = torch.zeros(20, 1, 8, 8)
    assert attack_success_rate(net, x, attack.apply_trigger, 2) == 1.0
    assert attack_success_rate(net, x, lambda t: t, 2) == 0.0
