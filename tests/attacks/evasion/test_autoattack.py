"""The AutoAttack-style ensemble on a small digits MLP."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest
import torch

from bastion.attacks.evasion import autoattack as autoattack_module
from bastion.attacks.evasion.apgd import APGD, APGDT
from bastion.attacks.evasion.autoattack import AutoAttack
from bastion.errors import ConfigurationError
from bastion.models import TorchClassifier

N = 100
EPS = 0.06
STEPS = 25



@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest single-threaded, above all on a shared, busy CPU."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)

@pytest.fixture(scope="module")
def batch(digits_split: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    _, _, x_test, y_test = digits_split
    return x_test[:N], y_test[:N]


@pytest.fixture(scope="module")
def correct_batch(
    digits_net: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples the model classifies correctly (so every attack sees the same inputs)."""
    x, y = batch
    with torch.no_grad():
        ok = digits_net(x).argmax(1) == y
    return x[ok], y[ok]


def test_fast_ensemble_is_the_per_sample_worst_case(
    digits_model: TorchClassifier, correct_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = correct_batch
    aa = AutoAttack(norm="linf", eps=EPS, version="fast", steps=STEPS)
    res = aa.generate(digits_model, x, y)
    ce = APGD(norm="linf", eps=EPS, steps=STEPS).generate(digits_model, x, y)
    t = APGDT(norm="linf", eps=EPS, steps=STEPS, n_target_classes=3).generate(digits_model, x, y)
    assert res.attack == "autoattack"
    assert res.clean_accuracy == 1.0
    assert res.robust_accuracy < 0.8
    # APGD-CE runs first with the same seed and inputs: every sample it breaks stays broken
    assert bool((res.success | ~ce.success).all())
    assert res.robust_accuracy <= min(ce.robust_accuracy, t.robust_accuracy) + 0.02
    assert float(res.distances.max()) <= EPS + 1e-6
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0


class _Scale(torch.nn.Module):
    """Multiplies the logits: same predictions, vanishing cross-entropy gradients."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.factor


def test_ensemble_sees_through_saturated_logits(
    digits_net: torch.nn.Module, correct_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = correct_batch
    masked = TorchClassifier(
        torch.nn.Sequential(digits_net, _Scale(1000.0)), input_shape=(1, 8, 8), num_classes=10
    )
    aa = AutoAttack(eps=0.08, version="fast", steps=STEPS)
    res = aa.generate(masked, x, y)
    ce = APGD(eps=0.08, steps=STEPS).generate(masked, x, y)
    assert ce.robust_accuracy > 0.9  # the CE attack is blinded by the masking
    assert res.robust_accuracy < ce.robust_accuracy - 0.25  # APGD-T's DLR loss is not
    assert aa.last_breakdown_["apgd-t"] > aa.last_breakdown_["apgd-ce"]


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.08), ("l2", 0.6)])
def test_breakdown_accounts_for_every_broken_sample(
    digits_model: TorchClassifier, batch: tuple[torch.Tensor, torch.Tensor], norm: str, eps: float
) -> None:
    x, y = batch
    aa = AutoAttack(norm=norm, eps=eps, version="fast", steps=STEPS, batch_size=32)
    res = aa.generate(digits_model, x, y)
    assert aa.component_names() == ["apgd-ce", "apgd-t"]
    assert aa.last_ran_ == ["apgd-ce", "apgd-t"] and aa.last_skipped_ == {}
    assert aa.last_n_ == N  # accumulated over the four batches
    assert aa.last_clean_correct_ == int(res.clean_correct.sum())
    robust = int((res.adv_pred == res.y).sum())
    assert aa.last_clean_correct_ - sum(aa.last_breakdown_.values()) == robust
    assert aa.last_breakdown_["apgd-ce"] > 0
    summary = aa.breakdown()
    assert summary["robust_accuracy_after"]["apgd-t"] == pytest.approx(res.robust_accuracy)
    assert res.robust_accuracy < res.clean_accuracy - 0.2
    assert float(res.distances.max()) <= eps + 1e-5
    # a second run starts its figures afresh
    aa.generate(digits_model, x[:10], y[:10])
    assert aa.last_n_ == 10


def test_standard_ensemble_runs_square_when_present(
    digits_model: TorchClassifier, correct_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = correct_batch
    aa = AutoAttack(eps=0.04, steps=10, n_target_classes=2, square_queries=40)
    assert aa.component_names() == ["apgd-ce", "apgd-t", "square"]
    res = aa.generate(digits_model, x[:30], y[:30])
    if importlib.util.find_spec("bastion.attacks.evasion.square") is None:
        assert aa.last_ran_ == ["apgd-ce", "apgd-t"]
        assert "square" in aa.last_skipped_
    else:
        assert aa.last_ran_ == ["apgd-ce", "apgd-t", "square"]
        assert aa.last_skipped_ == {}
    assert aa.last_clean_correct_ - sum(aa.last_breakdown_.values()) == int(
        (res.adv_pred == res.y).sum()
    )
    assert float(res.distances.max()) <= 0.04 + 1e-6


def test_missing_square_is_recorded_not_silent(
    digits_model: TorchClassifier,
    correct_batch: tuple[torch.Tensor, torch.Tensor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(autoattack_module, "_SQUARE_MODULE", "bastion.attacks.evasion.no_such")
    x, y = correct_batch
    aa = AutoAttack(eps=0.04, steps=10, n_target_classes=2)
    res = aa.generate(digits_model, x[:20], y[:20])
    assert aa.last_ran_ == ["apgd-ce", "apgd-t"]
    assert "no_such" in aa.last_skipped_["square"]
    assert aa.breakdown()["skipped"] == aa.last_skipped_
    assert res.robust_accuracy < 1.0


def test_deterministic_under_a_seed(
    digits_model: TorchClassifier, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = batch
    a = AutoAttack(norm="l2", eps=0.5, version="fast", steps=10, seed=7).generate(
        digits_model, x, y
    )
    b = AutoAttack(norm="l2", eps=0.5, version="fast", steps=10, seed=7).generate(
        digits_model, x, y
    )
    assert torch.equal(a.x_adv, b.x_adv)


def test_params_and_repr_are_stable(
    digits_model: TorchClassifier, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = batch
    aa = AutoAttack(eps=0.05, version="fast", steps=5)
    before = repr(aa)
    res = aa.generate(digits_model, x[:10], y[:10])
    assert repr(aa) == before
    assert not any(k.endswith("_") for k in res.params)
    assert res.params["version"] == "fast" and res.params["square_queries"] == 5000


@pytest.mark.parametrize(
    "kwargs",
    [
        {"eps": 0.1, "version": "plus"},
        {"eps": 0.1, "steps": 0},
        {"eps": 0.1, "square_queries": 0},
        {"eps": 0.1, "n_target_classes": 0},
        {"eps": -1.0},
        {"eps": 0.1, "norm": "l0"},
        {"eps": 0.1, "batch_size": -2},
    ],
)
def test_rejects_bad_parameters(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        AutoAttack(**kwargs)  # type: ignore[arg-type]
