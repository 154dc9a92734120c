"""Output hardening: answer prediction queries with less information than the model has.

A :class:`HardenedClassifier` wraps a model and passes its class probabilities through an
:class:`OutputPolicy` before answering. It is itself a classifier (score-only, or label-only for
:class:`LabelOnly`), so every attack runs against it unchanged, and its query counter and budget
work like any adapter's. Its scores are ``log(max(q, 1e-12))`` of the hardened vector ``q``;
its ``predict`` is the hardened vector's argmax (the wrapped model's own label for
:class:`LabelOnly`).

Policies (frozen dataclasses):

- :class:`TopK` — keep the ``k`` largest probabilities, zero the others (not renormalised).
- :class:`Rounding` — round probabilities to ``decimals`` decimals.
- :class:`LabelOnly` — no scores at all.
- :class:`GaussianNoise` — add ``N(0, sigma²)`` noise, clip at 0, renormalise. *Calibrated*: the
  top class stays on top (it is raised just above the largest other entry when the noise would
  have overtaken it), so labels and accuracy are unchanged. The noise comes from a generator
  seeded with ``seed`` when the wrapper is built, so one query sequence gets one answer sequence;
  a repeated query gets fresh noise (an adversary can average it out).
- :class:`ReverseSigmoid` — Lee, Edwards, Molloy & Srivastava, "Defending Against NN Model
  Stealing Attacks Using Deceptive Perturbations", IEEE S&P Workshops 2019
  (https://arxiv.org/abs/1806.00054): ``q ∝ p − β (σ(γ σ⁻¹(p)) − ½)``, clipped at 0 and
  renormalised; it bends the scores so that their log-odds mislead a learner while the top
  class usually survives (not guaranteed: the accuracy cost is measured, not assumed).

:func:`evaluate_output_policies` runs extraction attacks against each policy and reports the
drop in their fidelity (measured against the unhardened model) and the cost in accuracy.

Example
-------
>>> import torch
>>> from torch import nn
>>> from bastion.models import TorchClassifier
>>> from bastion.defences.output import HardenedClassifier, Rounding
>>> clf = TorchClassifier(nn.Linear(4, 3), input_shape=(4,), num_classes=3)
>>> hard = HardenedClassifier(clf, Rounding(decimals=1))
>>> p = hard.logits(torch.rand(2, 4)).exp()
>>> bool(torch.allclose(p, (p * 10).round() / 10, atol=1e-6))
True
"""

from __future__ import annotations

import contextlib
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from bastion.attacks.extraction.base import ExtractionAttack, _victim_labels
from bastion.attacks.extraction.metrics import fidelity as _fidelity
from bastion.errors import CapabilityError, ConfigurationError, InputError
from bastion.models.base import BaseClassifier, Capability, Classifier, check_labels
from bastion.models.base import unmetered as _unmetered

__all__ = [
    "GaussianNoise",
    "HardenedClassifier",
    "LabelOnly",
    "OutputPolicy",
    "PolicyEvaluation",
    "ReverseSigmoid",
    "Rounding",
    "TopK",
    "evaluate_output_policies",
]

log = logging.getLogger(__name__)
_LOG_EPS = 1e-12


class OutputPolicy(ABC):
    """Turns a batch of probability vectors into what the API answers."""

    name: ClassVar[str] = "policy"
    label_only: ClassVar[bool] = False
    seed: int | None = None

    @abstractmethod
    def apply(self, probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The hardened vectors for ``probs`` (``(n, k)``, rows summing to 1)."""

    def describe(self) -> str:
        return self.name


@dataclass(frozen=True)
class Identity(OutputPolicy):
    """No hardening (the baseline of :func:`evaluate_output_policies`)."""

    name: ClassVar[str] = "none"

    def apply(self, probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return probs


@dataclass(frozen=True)
class TopK(OutputPolicy):
    """Only the ``k`` largest probabilities are returned; the others are 0."""

    name: ClassVar[str] = "topk"
    k: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1:
            raise ConfigurationError(f"TopK needs k >= 1, got {self.k!r}")

    def apply(self, probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        k = min(self.k, probs.shape[1])
        idx = probs.topk(k, dim=1).indices
        return torch.zeros_like(probs).scatter(1, idx, probs.gather(1, idx))

    def describe(self) -> str:
        return f"topk(k={self.k})"


@dataclass(frozen=True)
class Rounding(OutputPolicy):
    """Probabilities rounded to ``decimals`` decimals."""

    name: ClassVar[str] = "rounding"
    decimals: int = 2

    def __post_init__(self) -> None:
        d = self.decimals
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            raise ConfigurationError(f"Rounding needs decimals >= 0, got {d!r}")

    def apply(self, probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.round(probs.double(), decimals=self.decimals).to(probs.dtype)

    def describe(self) -> str:
        return f"rounding(decimals={self.decimals})"


@dataclass(frozen=True)
class LabelOnly(OutputPolicy):
    """Only the predicted label is returned."""

    name: ClassVar[str] = "label-only"
    label_only: ClassVar[bool] = True

    def apply(self, probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.nn.functional.one_hot(probs.argmax(1), probs.shape[1]).to(probs.dtype)


@dataclass(frozen=True)
class GaussianNoise(OutputPolicy):
    """Calibrated Gaussian noise on the probabilities; the top class is kept on top."""

    name: ClassVar[str] = "noise"
    sigma: float = 0.05
    seed: int | None = 0

    def __post_init__(self) -> None:
        s = self.sigma
        if isinstance(s, bool) or not isinstance(s, int | float) or not (s > 0 and s < 1e9):
            raise ConfigurationError(f"GaussianNoise needs a positive, finite sigma, got {s!r}")
        if self.seed is not None and (
            not isinstance(self.seed, int) or isinstance(self.seed, bool)
        ):
            raise ConfigurationError(f"seed must be an int or None, got {self.seed!r}")

    def apply(self, probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        p = probs.double()
        noise = torch.randn(p.shape, generator=generator, dtype=torch.float64)
        q = (p + float(self.sigma) * noise.to(p.device)).clamp_min(0.0)
        top = p.argmax(1, keepdim=True)
        others = q.scatter(1, top, -1.0).max(dim=1, keepdim=True).values
        top_val = torch.maximum(q.gather(1, top), others + 1e-6)
        q = q.scatter(1, top, top_val)
        return (q / q.sum(dim=1, keepdim=True)).to(probs.dtype)

    def describe(self) -> str:
        return f"noise(sigma={self.sigma})"


@dataclass(frozen=True)
class ReverseSigmoid(OutputPolicy):
    """Lee et al.'s reverse-sigmoid perturbation (see the module docstring)."""

    name: ClassVar[str] = "reverse-sigmoid"
    beta: float = 1.0
    gamma: float = 0.1

    def __post_init__(self) -> None:
        for what, v in (("beta", self.beta), ("gamma", self.gamma)):
            if isinstance(v, bool) or not isinstance(v, int | float) or not (0 < v < 1e9):
                raise ConfigurationError(f"ReverseSigmoid needs a positive {what}, got {v!r}")

    def apply(self, probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        p = probs.double().clamp(1e-9, 1 - 1e-9)
        r = float(self.beta) * (torch.sigmoid(float(self.gamma) * torch.logit(p)) - 0.5)
        q = (p - r).clamp_min(0.0)
        total = q.sum(dim=1, keepdim=True)
        q = torch.where(total > 0, q / total.clamp_min(1e-300), probs.double())
        return q.to(probs.dtype)

    def describe(self) -> str:
        return f"reverse-sigmoid(beta={self.beta}, gamma={self.gamma})"


class HardenedClassifier(BaseClassifier):
    """``base`` answering through ``policy`` (see the module docstring)."""

    def __init__(
        self, base: Classifier, policy: OutputPolicy, *, query_budget: int | None = None
    ) -> None:
        if not isinstance(policy, OutputPolicy):
            raise ConfigurationError(
                f"policy must be an OutputPolicy (TopK, Rounding, ...), got {type(policy).__name__}"
            )
        if not policy.label_only and Capability.SCORES not in base.capabilities:
            raise CapabilityError(
                f"{type(base).__name__} is label-only; only the LabelOnly policy applies to it"
            )
        super().__init__(
            input_shape=tuple(base.input_shape),
            num_classes=base.num_classes,
            bounds=base.bounds,
            capabilities=Capability.LABELS if policy.label_only else Capability.score_only(),
            query_budget=query_budget,
        )
        self.base = base
        self.policy = policy
        self._generator = torch.Generator()
        if policy.seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(policy.seed)

    @property
    def device(self) -> torch.device:
        return self.base.device

    @torch.no_grad()
    def _hardened(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.base.logits(x).detach().double(), dim=1).cpu()
        return self.policy.apply(probs, self._generator)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.policy.label_only:
            raise CapabilityError(
                "this model answers label-only (LabelOnly policy): it offers predict(), not scores"
            )
        return super().logits(x)

    score_floor = math.log(_LOG_EPS)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        q = self._hardened(x)
        return torch.log(q.clamp_min(_LOG_EPS)).to(x.device, torch.float32)

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        if self.policy.label_only:
            return self.base.predict(x)
        return self._hardened(x).argmax(dim=1).to(x.device)

    @contextlib.contextmanager
    def unmetered(self) -> Iterator[None]:
        with super().unmetered(), _unmetered(self.base):
            yield

    @contextlib.contextmanager
    def evaluation(self) -> Iterator[None]:
        with self.base.evaluation():
            yield

    def __repr__(self) -> str:
        return f"HardenedClassifier({self.base!r}, {self.policy!r})"


@dataclass(frozen=True)
class PolicyEvaluation:
    """One policy's cost in accuracy and its effect on each attack.

    ``attacks`` maps an attack's label to ``{fidelity, fidelity_drop, queries, blocked}``;
    ``fidelity`` is measured against the *unhardened* model, ``fidelity_drop`` is the
    unhardened baseline's fidelity minus it, and an attack the policy makes impossible (scores
    needed, labels only given) is ``blocked`` with fidelity ``None`` and the whole baseline
    fidelity as its drop.
    """

    policy: str
    accuracy: float
    accuracy_cost: float
    attacks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "accuracy": self.accuracy,
            "accuracy_cost": self.accuracy_cost,
            "attacks": self.attacks,
        }


def _attack_label(attack: ExtractionAttack) -> str:
    strategy = getattr(attack, "strategy", None)
    return attack.name if strategy is None else f"{attack.name}/{strategy.name}"


def evaluate_output_policies(
    victim: Classifier,
    policies: Sequence[OutputPolicy],
    attacks: Sequence[ExtractionAttack],
    x_eval: torch.Tensor,
    y_eval: torch.Tensor,
    *,
    x_pool: torch.Tensor | None = None,
) -> list[PolicyEvaluation]:
    """Run every attack against ``victim`` under each policy; the first row is the baseline.

    Returns one :class:`PolicyEvaluation` per policy, preceded by ``"none"`` (no hardening).
    ``x_pool`` is the attacker's data for pool-based attacks; ``x_eval`` / ``y_eval`` are
    held-out data for accuracy and fidelity. Every attack's queries go through ``victim``, so
    its own counter adds them all up (give it no ``query_budget``, or one large enough).
    """
    if not attacks:
        raise ConfigurationError("give at least one extraction attack to evaluate against")
    if not isinstance(x_eval, torch.Tensor) or not isinstance(y_eval, torch.Tensor):
        raise InputError("x_eval and y_eval must be torch tensors")
    check_labels(y_eval, victim.num_classes, x_eval.shape[0], name="y_eval")
    labels = [_attack_label(a) for a in attacks]
    if len(set(labels)) != len(labels):
        raise ConfigurationError(f"attack labels must be distinct, got {labels}")
    rows: list[PolicyEvaluation] = []
    base_acc: float | None = None
    base_fid: dict[str, float] = {}
    for policy in [Identity(), *policies]:
        hardened = HardenedClassifier(victim, policy)
        with hardened.evaluation():
            pred = _victim_labels(hardened, x_eval.cpu().float())
        acc = float((pred == y_eval.cpu()).float().mean())
        if base_acc is None:
            base_acc = acc
        results: dict[str, dict[str, Any]] = {}
        for attack, label in zip(attacks, labels, strict=True):
            try:
                res = attack.extract(hardened, x_pool=x_pool, x_eval=x_eval, y_eval=y_eval)
            except CapabilityError:
                results[label] = {
                    "fidelity": None,
                    "fidelity_drop": base_fid.get(label, 0.0),
                    "queries": 0,
                    "blocked": True,
                }
                continue
            with _unmetered(victim):
                fid = _fidelity(res, victim, x_eval)
            if isinstance(policy, Identity):
                base_fid[label] = fid
            results[label] = {
                "fidelity": fid,
                "fidelity_drop": base_fid.get(label, fid) - fid,
                "queries": res.queries,
                "blocked": False,
            }
            log.info("%s vs %s: fidelity %.3f", label, policy.describe(), fid)
        rows.append(
            PolicyEvaluation(
                policy=policy.describe(),
                accuracy=acc,
                accuracy_cost=base_acc - acc,
                attacks=results,
            )
        )
    return rows
