"""Threat models and the taxonomy ids attached to findings."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from bastion.errors import ConfigurationError

__all__ = ["ATLAS", "OWASP", "Access", "Norm", "ThreatModel", "parse_norm"]


class Norm(StrEnum):
    """The norm that measures a perturbation."""

    LINF = "linf"
    L2 = "l2"

    @property
    def p(self) -> float:
        return math.inf if self is Norm.LINF else 2.0


def parse_norm(value: str | Norm) -> Norm:
    """Return the :class:`Norm` for ``value`` ("linf", "inf", "l2", "2")."""
    if isinstance(value, Norm):
        return value
    text = str(value).strip().lower().replace("_", "")
    aliases = {"linf": Norm.LINF, "inf": Norm.LINF, "l∞": Norm.LINF, "l2": Norm.L2, "2": Norm.L2}
    try:
        return aliases[text]
    except KeyError:
        raise ConfigurationError(f"unknown norm {value!r}: use 'linf' or 'l2'") from None


class Access(StrEnum):
    """What an adversary can observe of a model."""

    WHITE_BOX = "white-box"  # gradients
    SCORES = "scores"  # probabilities or logits, no gradients
    LABELS = "labels"  # the predicted label only


@dataclass(frozen=True)
class ThreatModel:
    """The adversary's budget: norm, radius, input bounds, goal and access."""

    norm: Norm = Norm.LINF
    eps: float | None = None
    bounds: tuple[float, float] = (0.0, 1.0)
    targeted: bool = False
    access: Access = Access.WHITE_BOX

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", parse_norm(self.norm))
        if self.eps is not None and not (self.eps >= 0 and math.isfinite(self.eps)):
            raise ConfigurationError(f"eps must be a finite number >= 0, got {self.eps!r}")
        lo, hi = self.bounds
        if not lo < hi:
            raise ConfigurationError(f"bounds must satisfy low < high, got {self.bounds!r}")


# MITRE ATLAS technique and mitigation ids used by findings.
ATLAS = {
    "craft_adversarial_data": "AML.T0043",
    "white_box_optimisation": "AML.T0043.000",
    "black_box_optimisation": "AML.T0043.001",
    "black_box_transfer": "AML.T0043.002",
    "backdoor_trigger": "AML.T0043.004",
    "evade_model": "AML.T0015",
    "membership_inference": "AML.T0024.000",
    "model_inversion": "AML.T0024.001",
    "model_extraction": "AML.T0024.002",
    "poison_training_data": "AML.T0020",
    "supply_chain_model": "AML.T0010.003",
    "unsafe_artifacts": "AML.T0011.000",
    "denial_of_service": "AML.T0029",
    "mitigation_model_hardening": "AML.M0003",
    "mitigation_restrict_queries": "AML.M0004",
    "mitigation_validate_model": "AML.M0008",
    "mitigation_verify_artifacts": "AML.M0014",
    "mitigation_input_detection": "AML.M0015",
}

# OWASP Machine Learning Security Top 10.
OWASP = {
    "input_manipulation": "ML01",
    "data_poisoning": "ML02",
    "model_inversion": "ML03",
    "membership_inference": "ML04",
    "model_theft": "ML05",
    "supply_chain": "ML06",
    "transfer_learning": "ML07",
    "model_skewing": "ML08",
    "output_integrity": "ML09",
    "model_poisoning": "ML10",
}
