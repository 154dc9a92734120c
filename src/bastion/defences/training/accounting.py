"""Privacy accounting for DP-SGD: ε from (σ, q, steps, δ), and σ from a target ε.

Both are thin wrappers over Opacus's accountants (``opacus.accountants``), so bastion reports
exactly the ε that Opacus would for the same mechanism:

- ``"rdp"``: Rényi DP of the Poisson-subsampled Gaussian mechanism (Mironov 2017; Mironov,
  Talwar & Zhang 2019), converted to (ε, δ) with the tighter conversion of Balle et al. 2020
  that Opacus ≥ 1.0 uses.
- ``"prv"``: numerical composition of privacy random variables (Gopi, Lee & Wutschitz 2021),
  usually a little tighter than RDP.

Example
-------
>>> round(compute_epsilon(noise_multiplier=1.1, sample_rate=0.004, steps=15000, delta=1e-5), 3)
2.503
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from typing import Literal, TypeVar

from bastion.errors import ConfigurationError

__all__ = ["ACCOUNTANTS", "Accountant", "calibrate_noise", "compute_epsilon"]

Accountant = Literal["rdp", "prv"]
ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv")

log = logging.getLogger(__name__)
_T = TypeVar("_T")


def _quietly(fn: Callable[[], _T]) -> _T:
    """Run an Opacus call, turning its advisory warnings (e.g. "optimal order is the largest
    alpha") into log records instead of warnings, so callers under ``-W error`` still work."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    for w in caught:
        log.info("opacus accountant: %s", w.message)
    return out


def _check(sample_rate: float, steps: int, delta: float, accountant: str) -> None:
    if not 0.0 < sample_rate <= 1.0:
        raise ConfigurationError(f"sample_rate must lie in (0, 1], got {sample_rate!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ConfigurationError(f"steps must be a positive integer, got {steps!r}")
    if not 0.0 < delta < 1.0:
        raise ConfigurationError(f"delta must lie in (0, 1), got {delta!r}")
    if accountant not in ACCOUNTANTS:
        raise ConfigurationError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")


def compute_epsilon(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "rdp",
) -> float:
    """ε of ``steps`` Poisson-subsampled Gaussian steps (rate ``sample_rate``, noise σ).

    ``inf`` when ``noise_multiplier`` is 0 (no noise means no privacy).
    """
    _check(sample_rate, steps, delta, accountant)
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ConfigurationError(
            f"noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}"
        )
    if noise_multiplier == 0:
        return math.inf
    from opacus.accountants import PRVAccountant, RDPAccountant

    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    # Opacus's own step() merges identical consecutive steps into one history entry.
    acc.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    return float(_quietly(lambda: acc.get_epsilon(delta=delta)))


def calibrate_noise(
    *,
    target_epsilon: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "rdp",
    tolerance: float = 0.01,
) -> float:
    """The noise multiplier σ whose ε lies in ``[target - tolerance, target]``.

    Found by Opacus's bisection (``get_noise_multiplier``), which keeps ε below the target.
    """
    _check(sample_rate, steps, delta, accountant)
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ConfigurationError(
            f"target_epsilon must be a positive number, got {target_epsilon!r}"
        )
    if not (math.isfinite(tolerance) and tolerance > 0):
        raise ConfigurationError(f"tolerance must be positive, got {tolerance!r}")
    from opacus.accountants.utils import get_noise_multiplier

    try:
        sigma = _quietly(
            lambda: get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
                epsilon_tolerance=tolerance,
            )
        )
    except ValueError as exc:
        raise ConfigurationError(
            f"cannot reach ε = {target_epsilon} with δ = {delta}, q = {sample_rate} and "
            f"{steps} steps: raise target_epsilon or reduce the epochs/sample rate"
        ) from exc
    return float(sigma)
