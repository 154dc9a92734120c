"""What an audit is asked to do: the model and data, the threat model, and per-check settings.

An :class:`AuditConfig` comes from ``--config audit.yaml`` (:func:`load_config`), from flags,
or both (flags win). The YAML is read strictly: an unknown key is refused with a message that
names it and lists the keys allowed there. Example::

    model: model.pt                 # a file, registry://name@alias-or-version, or an https URL
    train: train.npz                # the member set of the membership checks
    test: test.npz                  # .npz (x, y), or a .csv/.parquet table with named columns
    label: y                        # a table's label column (default y/label/target/class)
    contract: contract.yaml         # a table's data contract: the feature schema of attacks
    out: audit/
    seed: 0
    model_options: {input_shape: [1, 28, 28], bounds: [0, 1], trust_pickle: false}
    threat:
      access: white-box             # white-box | scores | labels
      query_budget: 10000
      norm: linf                    # linf | l2
      eps: 0.03                     # default: per data domain, see DEFAULT_EPS
      sensitive: [train]
      time_budget_s: 900
    checks:
      skip: [extraction]
      evasion: {max_samples: 200}

Default eps per data domain (``eps_source`` in the report says which applied):

==========  ==========================  ================================================
domain      L∞                          L2
==========  ==========================  ================================================
image       8/255 of the input range    0.5 of the input range (the RobustBench radii)
tabular     0.1 of the input range      0.5 of the input range
==========  ==========================  ================================================

An image in [0, 1] thus gets ε = 8/255 ≈ 0.031 (L∞); a tabular model whose features lie in
[0, 1] gets ε = 0.1, a tenth of every feature's range, since tabular features are not
perceptual and small changes of a few features are the realistic attack.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bastion.errors import ConfigurationError
from bastion.threat import Access, Norm, parse_norm

__all__ = [
    "DEFAULT_EPS",
    "DEFAULT_QUERY_BUDGET",
    "AuditConfig",
    "AuditThreat",
    "default_eps",
    "load_config",
    "parse_config",
]

#: eps as a fraction of the input range, by domain and norm
DEFAULT_EPS: dict[str, dict[Norm, float]] = {
    "image": {Norm.LINF: 8 / 255, Norm.L2: 0.5},
    "tabular": {Norm.LINF: 0.1, Norm.L2: 0.5},
    "other": {Norm.LINF: 0.1, Norm.L2: 0.5},
}
#: queries an adversary may send when the threat model does not say
DEFAULT_QUERY_BUDGET = 10_000
_SEVERITIES = ("info", "low", "medium", "high", "critical")


def default_eps(domain: str, norm: Norm, bounds: tuple[float, float]) -> float:
    """The domain's default radius (see the module docstring) scaled to ``bounds``."""
    return DEFAULT_EPS.get(domain, DEFAULT_EPS["other"])[norm] * (bounds[1] - bounds[0])


@dataclass(frozen=True)
class AuditThreat:
    """The adversary of an audit: access, budget, perturbation and what is sensitive.

    ``eps`` ``None`` means the domain default (filled in when the data is known).
    """

    access: Access = Access.WHITE_BOX
    norm: Norm = Norm.LINF
    eps: float | None = None
    targeted: bool = False
    query_budget: int | None = DEFAULT_QUERY_BUDGET
    sensitive: tuple[str, ...] = ("train",)
    time_budget_s: float | None = None
    output_policy: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "access", Access(self.access))
        except ValueError:
            raise ConfigurationError(
                f"threat access must be white-box, scores or labels, got {self.access!r}"
            ) from None
        object.__setattr__(self, "norm", parse_norm(self.norm))
        if self.eps is not None and not (
            isinstance(self.eps, int | float) and math.isfinite(self.eps) and self.eps >= 0
        ):
            raise ConfigurationError(f"threat eps must be a number >= 0, got {self.eps!r}")
        if self.query_budget is not None and (
            isinstance(self.query_budget, bool)
            or not isinstance(self.query_budget, int)
            or self.query_budget < 1
        ):
            raise ConfigurationError(
                f"threat query_budget must be a whole number >= 1, got {self.query_budget!r}"
            )
        if self.time_budget_s is not None and not (
            isinstance(self.time_budget_s, int | float) and self.time_budget_s > 0
        ):
            raise ConfigurationError(
                f"threat time_budget_s must be a number of seconds > 0, got {self.time_budget_s!r}"
            )
        if isinstance(self.sensitive, str) or not all(isinstance(s, str) for s in self.sensitive):
            raise ConfigurationError("threat sensitive must be a list of data roles, e.g. [train]")
        object.__setattr__(self, "sensitive", tuple(self.sensitive))

    def to_dict(self) -> dict[str, Any]:
        return {
            "access": self.access.value,
            "norm": self.norm.value,
            "eps": self.eps,
            "targeted": self.targeted,
            "query_budget": self.query_budget,
            "sensitive": list(self.sensitive),
            "time_budget_s": self.time_budget_s,
            "output_policy": None if self.output_policy is None else dict(self.output_policy),
        }


@dataclass(frozen=True)
class AuditConfig:
    """Everything one audit needs (see the module docstring for the YAML form)."""

    model: str | None = None
    train: Path | None = None
    test: Path | None = None
    out: Path = Path("bastion-audit")
    seed: int = 0
    threat: AuditThreat = field(default_factory=AuditThreat)
    model_options: Mapping[str, Any] = field(default_factory=dict)
    api_key_env: str | None = None
    signature_key: Path | None = None
    only: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    fail_on: str | None = None
    contract: Path | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigurationError(f"seed must be a whole number >= 0, got {self.seed!r}")
        if self.fail_on is not None:
            from bastion.audit.baseline import parse_fail_on

            parse_fail_on(self.fail_on)  # a severity, or new:SEVERITY (with --baseline)
        unknown = set(self.model_options) - set(_MODEL_OPTIONS)
        if unknown:
            raise ConfigurationError(_unknown("model_options", unknown, _MODEL_OPTIONS))

    def with_overrides(self, **changes: Any) -> AuditConfig:
        """A copy with the given fields replaced; ``None`` values leave a field as it is."""
        threat_fields = set(AuditThreat.__dataclass_fields__)
        threat_changes = {k: v for k, v in changes.items() if k in threat_fields and v is not None}
        own = {k: v for k, v in changes.items() if k not in threat_fields and v is not None}
        opts = dict(self.model_options)
        opts.update(own.pop("model_options", {}))
        threat = replace(self.threat, **threat_changes) if threat_changes else self.threat
        return replace(self, threat=threat, model_options=opts, **own)


_TOP = (
    "model", "train", "test", "out", "seed", "threat", "model_options", "api_key_env",
    "signature_key", "checks", "fail_on", "contract", "label",
)
_MODEL_OPTIONS = (
    "input_shape", "num_classes", "bounds", "factory", "trust_pickle", "device", "mode",
)


def _unknown(where: str, keys: set[str], allowed: Any) -> str:
    return (
        f"unknown key{'s' if len(keys) > 1 else ''} {', '.join(sorted(map(repr, keys)))} in "
        f"{where}; allowed: {', '.join(allowed)}"
    )


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{where} must be a mapping of keys to values")
    return {str(k): v for k, v in value.items()}


def parse_config(data: Any, *, base: Path | None = None) -> AuditConfig:
    """Build an :class:`AuditConfig` from parsed YAML, refusing unknown keys.

    Relative paths are taken from ``base`` (the folder of the YAML file).
    """
    top = _mapping(data, "the audit configuration")
    unknown = set(top) - set(_TOP)
    if unknown:
        raise ConfigurationError(_unknown("the audit configuration", unknown, _TOP))

    def path(key: str) -> Path | None:
        value = top.get(key)
        if value is None:
            return None
        p = Path(str(value)).expanduser()
        return p if p.is_absolute() or base is None else base / p

    threat_data = _mapping(top.get("threat"), "threat")
    allowed = tuple(AuditThreat.__dataclass_fields__)
    unknown = set(threat_data) - set(allowed)
    if unknown:
        raise ConfigurationError(_unknown("threat", unknown, allowed))
    try:
        threat = AuditThreat(**threat_data)
    except TypeError as exc:  # a wrongly typed value the dataclass could not take
        raise ConfigurationError(f"threat: {exc}") from None

    checks = _mapping(top.get("checks"), "checks")
    only = _names(checks.pop("only", ()), "checks.only")
    skip = _names(checks.pop("skip", ()), "checks.skip")
    settings = {name: _mapping(v, f"checks.{name}") for name, v in checks.items()}
    model = top.get("model")
    if model is not None and not str(model).startswith(("registry://", "http://", "https://")):
        model = str(path("model"))
    out = path("out")
    return AuditConfig(
        model=None if model is None else str(model),
        train=path("train"),
        test=path("test"),
        out=out if out is not None else Path("bastion-audit"),
        seed=top.get("seed", 0),
        threat=threat,
        model_options=_mapping(top.get("model_options"), "model_options"),
        api_key_env=top.get("api_key_env"),
        signature_key=path("signature_key"),
        only=only,
        skip=skip,
        settings=settings,
        fail_on=top.get("fail_on"),
        contract=path("contract"),
        label=None if top.get("label") is None else str(top["label"]),
    )


def _names(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigurationError(f"{where} must be a list of check names")
    return tuple(v.strip() for v in value)


def load_config(path: str | Path) -> AuditConfig:
    """Read ``--config audit.yaml`` (see the module docstring)."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigurationError(f"audit configuration {p} not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{p} is not valid YAML: {exc}") from None
    try:
        return parse_config(data, base=p.parent)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{p}: {exc}") from None
