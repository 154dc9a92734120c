"""Extraction attacks and output policies by name, for the CLI and the benchmarks.

Example
-------
>>> from bastion.attacks.extraction.catalog import build_extraction_attack, parse_policy
>>> build_extraction_attack("copycat", query_budget=100).labels
'hard'
>>> parse_policy("rounding:2")
Rounding(decimals=2)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from bastion.attacks.extraction.base import ExtractionAttack
from bastion.attacks.extraction.equation_solving import EquationSolving
from bastion.attacks.extraction.knockoff import CopycatCNN, KnockoffNets, SurrogateFactory
from bastion.errors import ConfigurationError

if TYPE_CHECKING:
    from bastion.defences.output import OutputPolicy

__all__ = ["STRATEGIES", "build_extraction_attack", "parse_policy"]

#: the ``--strategy`` names of ``bastion evaluate extraction``
STRATEGIES = ("knockoff", "copycat", "adaptive", "jacobian", "noise", "equation")


def build_extraction_attack(
    name: str,
    *,
    query_budget: int,
    labels: Literal["soft", "hard"] = "soft",
    surrogate: str | SurrogateFactory = "mlp",
    rounds: int = 5,
    epochs: int = 20,
    seed: int | None = 0,
) -> ExtractionAttack:
    """The attack behind a strategy name.

    ``knockoff``: soft labels on the data pool; ``copycat``: hard labels on the pool;
    ``adaptive``: Knockoff Nets' bandit policy over the pool with ``labels``;
    ``jacobian`` / ``noise``: Jacobian augmentation / random noise with ``labels``;
    ``equation``: equation solving (linear softmax victims, scores needed).
    """
    key = name.lower().strip()
    common = {
        "query_budget": query_budget,
        "surrogate": surrogate,
        "rounds": rounds,
        "epochs": epochs,
        "seed": seed,
    }
    if key == "equation":
        return EquationSolving(query_budget=query_budget, seed=seed)
    if key == "knockoff":
        return KnockoffNets(strategy="pool", labels=labels, **common)  # type: ignore[arg-type]
    if key == "copycat":
        return CopycatCNN(strategy="pool", labels="hard", **common)  # type: ignore[arg-type]
    if key in ("adaptive", "jacobian", "noise"):
        return KnockoffNets(strategy=key, labels=labels, **common)  # type: ignore[arg-type]
    raise ConfigurationError(f"unknown extraction strategy {name!r}; use one of {STRATEGIES}")


def parse_policy(text: str) -> OutputPolicy:
    """An output policy from ``topk:K``, ``rounding:D``, ``label-only``, ``noise:SIGMA`` or
    ``reverse-sigmoid:BETA,GAMMA``."""
    from bastion.defences.output import GaussianNoise, LabelOnly, ReverseSigmoid, Rounding, TopK

    name, _, arg = text.strip().lower().partition(":")
    try:
        if name == "topk":
            return TopK(k=int(arg or 1))
        if name == "rounding":
            return Rounding(decimals=int(arg or 2))
        if name in ("label-only", "labels", "labelonly"):
            return LabelOnly()
        if name == "noise":
            return GaussianNoise(sigma=float(arg or 0.05))
        if name == "reverse-sigmoid":
            parts = [float(v) for v in arg.split(",") if v] if arg else []
            beta = parts[0] if parts else 1.0
            gamma = parts[1] if len(parts) > 1 else 0.1
            return ReverseSigmoid(beta=beta, gamma=gamma)
    except ValueError as exc:
        if isinstance(exc, ConfigurationError):
            raise
        raise ConfigurationError(f"bad output policy {text!r}: {exc}") from None
    raise ConfigurationError(
        f"unknown output policy {text!r}; use topk:K, rounding:D, label-only, noise:SIGMA or "
        "reverse-sigmoid:BETA,GAMMA"
    )
