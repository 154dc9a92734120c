"""The catalogue of evasion attacks by name, as the CLI and the evaluation runner use them.

:func:`build_attack` turns a name, a norm and an epsilon into a configured attack, with the
defaults an evaluation should use (the same as each attack's own, except query budgets sized
for an evaluation run). :func:`with_eps` clones an attack at another epsilon.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any

from bastion.attacks.evasion.base import EvasionAttack
from bastion.errors import ConfigurationError
from bastion.threat import Norm, parse_norm

__all__ = [
    "ATTACKS",
    "AttackSpec",
    "attack_names",
    "build_attack",
    "default_attacks",
    "kind_of",
    "runnable_attacks",
    "with_eps",
]


@dataclass(frozen=True)
class AttackSpec:
    """Where an attack lives and how an evaluation configures it."""

    module: str
    cls: str
    kind: str  # "white-box", "score-based" or "decision-based"
    defaults: dict[str, Any]
    fixed: dict[str, Any]

    def load(self) -> type[EvasionAttack]:
        mod = importlib.import_module(f"bastion.attacks.evasion.{self.module}")
        attack_cls: type[EvasionAttack] = getattr(mod, self.cls)
        return attack_cls


ATTACKS: dict[str, AttackSpec] = {
    "fgsm": AttackSpec("fgsm", "FGSM", "white-box", {}, {}),
    "pgd": AttackSpec("pgd", "PGD", "white-box", {"steps": 40}, {}),
    "apgd-ce": AttackSpec("apgd", "APGD", "white-box", {"steps": 100}, {"loss": "ce"}),
    "apgd-dlr": AttackSpec("apgd", "APGD", "white-box", {"steps": 100}, {"loss": "dlr"}),
    "apgd-t": AttackSpec("apgd", "APGDT", "white-box", {"steps": 100}, {}),
    "cw": AttackSpec(
        "cw",
        "CarliniWagnerL2",
        "white-box",
        {"steps": 100, "binary_search_steps": 5, "c": 1.0},
        {},
    ),
    "deepfool": AttackSpec("deepfool", "DeepFool", "white-box", {}, {}),
    "square": AttackSpec("square", "Square", "score-based", {"max_queries": 1000}, {}),
    "hopskipjump": AttackSpec(
        "hopskipjump", "HopSkipJump", "decision-based", {"max_queries": 1000}, {}
    ),
    "autoattack": AttackSpec("autoattack", "AutoAttack", "white-box", {}, {}),
}
_ALIASES = {"hsj": "hopskipjump", "apgd": "apgd-ce", "apgdt": "apgd-t", "aa": "autoattack"}


def attack_names() -> list[str]:
    """Names accepted by :func:`build_attack`."""
    return list(ATTACKS)


def build_attack(
    name: str, *, norm: str | Norm, eps: float | None, **overrides: Any
) -> EvasionAttack:
    """Configure the attack called ``name`` for ``norm`` and ``eps``.

    Minimum-norm attacks (C&W, DeepFool, HopSkipJump) take ``eps`` as the success threshold:
    their results are projected onto the eps-ball. Unknown names and norms an attack does not
    support raise :class:`~bastion.errors.ConfigurationError`.
    """
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in ATTACKS:
        raise ConfigurationError(
            f"unknown attack {name!r}; choose from {', '.join(attack_names())}"
        )
    spec = ATTACKS[key]
    try:
        attack_cls = spec.load()
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"attack {key!r} is not available: {exc}") from exc
    norm = parse_norm(norm)
    if norm not in attack_cls.norms:
        supported = " or ".join(n.value for n in attack_cls.norms)
        raise ConfigurationError(f"attack {key!r} supports norm {supported}, not {norm.value!r}")
    kwargs: dict[str, Any] = {**spec.defaults, **overrides, **spec.fixed, "eps": eps}
    params = inspect.signature(attack_cls.__init__).parameters
    if "norm" in params:
        kwargs["norm"] = norm
    unknown = [k for k in kwargs if k not in params]
    for k in unknown:
        if k in overrides:
            raise ConfigurationError(f"attack {key!r} has no parameter {k!r}")
        kwargs.pop(k)
    return attack_cls(**kwargs)


def runnable_attacks(classifier: Any, norm: str | Norm = "linf") -> list[str]:
    """The attacks of the catalogue that will run on ``classifier`` in ``norm``: those whose
    required access (gradients, scores, labels) the model offers, that support the norm, and,
    for Square, whose inputs are images."""
    out = []
    for name in ATTACKS:
        try:
            attack = build_attack(name, norm=norm, eps=0.1)
        except ConfigurationError:
            continue  # the attack does not support this norm
        if attack.requires & ~classifier.capabilities:
            continue
        if name == "square" and not _image_like(tuple(classifier.input_shape)):
            continue
        out.append(name)
    return out


def default_attacks(classifier: Any, norm: str | Norm = "linf") -> list[str]:
    """The attack an evaluation runs when none is named: PGD on a model with gradients,
    Square on a score-only model of images, HopSkipJump otherwise (ONNX models without
    gradients, trees, label-only endpoints)."""
    runnable = runnable_attacks(classifier, norm)
    for name in ("pgd", "square", "hopskipjump"):
        if name in runnable:
            return [name]
    if runnable:
        return runnable[:1]
    raise ConfigurationError(f"no attack of the catalogue runs on this model in {norm}")


def _image_like(shape: tuple[int, ...]) -> bool:
    if len(shape) == 2:
        shape = (1, *shape)
    return len(shape) == 3 and min(shape[1:]) >= 2


def kind_of(attack: EvasionAttack) -> str:
    """ "white-box", "score-based" or "decision-based", from what the attack requires."""
    from bastion.models.base import Capability

    if Capability.GRADIENTS in attack.requires:
        return "white-box"
    if Capability.SCORES in attack.requires:
        return "score-based"
    return "decision-based"


def with_eps(attack: EvasionAttack, eps: float) -> EvasionAttack:
    """A copy of ``attack`` with the same parameters and another ``eps``."""
    params = attack.get_params()
    signature = inspect.signature(type(attack).__init__).parameters
    kwargs = {k: v for k, v in params.items() if k in signature and k != "self"}
    kwargs["eps"] = eps
    if "step_size" in kwargs and attack.eps:
        kwargs["step_size"] = kwargs["step_size"] * eps / attack.eps
    return type(attack)(**kwargs)
