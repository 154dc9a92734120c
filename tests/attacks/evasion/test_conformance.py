"""One contract, checked on every attack in the catalogue (as scikit-learn's estimator checks)."""

from __future__ import annotations

import inspect
import json
from typing import Any

import pytest
import torch

from bastion.attacks.evasion.base import EvasionAttack
from bastion.attacks.evasion.catalog import ATTACKS, build_attack
from bastion.errors import ConfigurationError
from bastion.models import TorchClassifier

#: small budgets so the whole conformance suite stays fast
SMALL: dict[str, dict[str, Any]] = {
    "fgsm": {},
    "pgd": {"steps": 5},
    "apgd-ce": {"steps": 10},
    "apgd-dlr": {"steps": 10},
    "apgd-t": {"steps": 5, "n_target_classes": 2},
    "cw": {"steps": 20, "binary_search_steps": 2},
    "deepfool": {"steps": 10},
    "square": {"max_queries": 50},
    "hopskipjump": {"max_queries": 200},
    "autoattack": {"steps": 5, "n_target_classes": 2, "square_queries": 50},
}
EPS = {"linf": 0.15, "l2": 1.0}


def _cases() -> list[tuple[str, str]]:
    out = []
    for name, spec in ATTACKS.items():
        for norm in spec.load().norms:
            out.append((name, norm.value))
    return out


CASES = _cases()


def test_every_catalogue_attack_has_small_settings() -> None:
    assert set(SMALL) == set(ATTACKS)


def _make(name: str, norm: str, seed: int = 0) -> EvasionAttack:
    return build_attack(name, norm=norm, eps=EPS[norm], seed=seed, **SMALL[name])


@pytest.mark.parametrize(("name", "norm"), CASES)
def test_output_lies_inside_the_threat_model(
    name: str, norm: str, digits_model, digits_split
) -> None:
    _, _, x, y = digits_split
    x, y = x[:24], y[:24]
    res = _make(name, norm).generate(digits_model, x, y)
    delta = (res.x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert bool((size <= EPS[norm] + 1e-5).all()), f"{name} left the {norm} ball"
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    assert res.robust_accuracy <= res.clean_accuracy
    assert torch.equal(res.success, res.adv_pred != res.y)
    json.dumps(res.to_dict())  # JSON-ready


@pytest.mark.parametrize(("name", "norm"), CASES)
def test_deterministic_under_a_seed(name: str, norm: str, digits_model, digits_split) -> None:
    _, _, x, y = digits_split
    a = _make(name, norm, seed=3).generate(digits_model, x[:12], y[:12])
    b = _make(name, norm, seed=3).generate(digits_model, x[:12], y[:12])
    assert torch.equal(a.x_adv, b.x_adv)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_model_mode_is_restored(name: str, digits_net, digits_split) -> None:
    _, _, x, y = digits_split
    norm = ATTACKS[name].load().norms[0].value
    digits_net.train()
    try:
        clf = TorchClassifier(digits_net, input_shape=(1, 8, 8), num_classes=10)
        _make(name, norm).generate(clf, x[:4], y[:4])
        assert digits_net.training
    finally:
        digits_net.eval()


@pytest.mark.parametrize("name", list(ATTACKS))
def test_bad_parameters_are_rejected_with_a_clear_message(name: str) -> None:
    norm = ATTACKS[name].load().norms[0].value
    with pytest.raises(ConfigurationError, match="eps"):
        build_attack(name, norm=norm, eps=-1.0)
    with pytest.raises(ConfigurationError, match="norm"):
        build_attack(name, norm="l7", eps=0.1)
    with pytest.raises(ConfigurationError, match="no parameter"):
        build_attack(name, norm=norm, eps=0.1, no_such_option=1)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_constructor_is_keyword_only_and_repr_stable(name: str) -> None:
    cls = ATTACKS[name].load()
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)
    norm = cls.norms[0].value
    assert repr(_make(name, norm)) == repr(_make(name, norm))
    assert cls.__doc__ and inspect.getmodule(cls).__doc__  # paper and usage documented


def test_unknown_attack_names_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="unknown attack 'pgdd'"):
        build_attack("pgdd", norm="linf", eps=0.1)
