"""The accountant reports Opacus's ε exactly; target-ε calibration lands just below the target."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp

from bastion.defences.training.accounting import calibrate_noise, compute_epsilon
from bastion.errors import ConfigurationError


def _opacus_stepwise(kind: str, sigma: float, q: float, steps: int, delta: float) -> float:
    """Opacus's ε after calling ``step()`` once per training step, as its optimizer does."""
    acc = RDPAccountant() if kind == "rdp" else PRVAccountant()
    for _ in range(steps):
        acc.step(noise_multiplier=sigma, sample_rate=q)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=delta))


@pytest.mark.parametrize("kind", ["rdp", "prv"])
@pytest.mark.parametrize(("sigma", "q", "steps"), [(1.1, 0.01, 300), (0.8, 0.05, 120)])
def test_matches_opacus_stepwise(kind: str, sigma: float, q: float, steps: int) -> None:
    ours = compute_epsilon(
        noise_multiplier=sigma, sample_rate=q, steps=steps, delta=1e-5, accountant=kind
    )
    assert ours == pytest.approx(_opacus_stepwise(kind, sigma, q, steps, 1e-5), abs=1e-6)


@pytest.mark.parametrize(("sigma", "epochs"), [(1.1, 60), (1.3, 15)])
def test_reference_points(sigma: float, epochs: int) -> None:
    """REFERENCES.md: σ = 1.1 / 60 epochs → ε ≈ 2.91 and σ = 1.3 / 15 epochs → ε ≈ 1.16 at
    q = 0.004, δ = 1e-5. Those figures use the classic RDP → (ε, δ) conversion; Opacus ≥ 1.0
    (and so bastion) uses the tighter Balle et al. 2020 conversion, which must be smaller."""
    q, delta = 0.004, 1e-5
    steps = int(epochs / q)
    ours = compute_epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta)
    acc = RDPAccountant()
    acc.history = [(sigma, q, steps)]
    assert ours == pytest.approx(acc.get_epsilon(delta=delta), abs=1e-6)
    orders = np.array([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))
    rdp = compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders)
    classic = float(np.min(rdp - math.log(delta) / (orders - 1)))
    assert classic == pytest.approx({1.1: 2.91, 1.3: 1.16}[sigma], abs=0.01)
    assert ours < classic


def test_prv_is_tighter_than_rdp() -> None:
    def eps(kind: str) -> float:
        return compute_epsilon(
            noise_multiplier=1.1, sample_rate=0.004, steps=15000, delta=1e-5, accountant=kind
        )

    assert eps("prv") < eps("rdp")


def test_epsilon_decreases_with_noise_and_no_noise_is_infinite() -> None:
    eps = [
        compute_epsilon(noise_multiplier=s, sample_rate=0.02, steps=500, delta=1e-5)
        for s in (0.7, 1.0, 2.0)
    ]
    assert eps[0] > eps[1] > eps[2] > 0
    assert math.isinf(compute_epsilon(noise_multiplier=0.0, sample_rate=0.02, steps=5, delta=1e-5))


@pytest.mark.parametrize("kind", ["rdp", "prv"])
@pytest.mark.parametrize("target", [0.5, 2.0, 8.0])
def test_calibration_lands_just_below_target(kind: str, target: float) -> None:
    sigma = calibrate_noise(
        target_epsilon=target, sample_rate=0.05, steps=200, delta=1e-5, accountant=kind
    )
    eps = compute_epsilon(
        noise_multiplier=sigma, sample_rate=0.05, steps=200, delta=1e-5, accountant=kind
    )
    assert target - 0.01 <= eps <= target


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sample_rate": 0.0},
        {"sample_rate": 1.5},
        {"steps": 0},
        {"delta": 0.0},
        {"accountant": "gdp"},
        {"noise_multiplier": -1.0},
    ],
)
def test_bad_parameters_rejected(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {
        "noise_multiplier": 1.0,
        "sample_rate": 0.01,
        "steps": 10,
        "delta": 1e-5,
        "accountant": "rdp",
    }
    base.update(kwargs)
    with pytest.raises(ConfigurationError):
        compute_epsilon(**base)  # type: ignore[arg-type]


def test_unreachable_target_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="cannot reach"):
        calibrate_noise(target_epsilon=1e-4, sample_rate=1.0, steps=10_000, delta=1e-5)
