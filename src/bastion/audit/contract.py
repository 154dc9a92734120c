"""The audit's core contract: checks, their context and their results.

An audit is a list of :class:`Check` objects run against one :class:`AuditContext`. Each check
is one class, registered in the catalogue with :func:`register`, so adding a check is one file
under ``bastion/audit/checks/``. A check never renders: it returns a :class:`CheckResult`
(metrics with intervals, findings, and the data of its plots), and ``bastion.report`` draws it.

The document these results go into is described by ``schemas/audit-1.schema.json``.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from bastion.audit.executor import Executor, InProcessExecutor
from bastion.errors import ConfigurationError

__all__ = [
    "CATALOGUE",
    "PRACTICES",
    "THREATS",
    "AuditContext",
    "Check",
    "CheckResult",
    "Metric",
    "Requirement",
    "Status",
    "finding_fingerprint",
    "register",
]

Status = Literal["passed", "failed", "not_run", "error"]

#: The five threats of the scorecard's rows (plus data quality, which has no row of its own).
THREATS: dict[str, str] = {
    "evasion": "Evasion",
    "model_stealing": "Model stealing",
    "data_poisoning": "Data poisoning",
    "inversion_membership": "Model inversion & membership",
    "unsafe_artifacts": "Unsafe artifacts",
}

#: The seed practices of the scorecard's columns.
PRACTICES: dict[str, str] = {
    "secure_data_access": "Secure data access",
    "model_validation": "Model validation",
    "data_validation": "Data validation",
    "model_monitoring": "Model monitoring",
    "regular_updates": "Regular updates",
    "privacy_protection": "Privacy protection",
    "collaboration": "Collaboration",
}


def finding_fingerprint(check: str, kind: str, location: str | None = None) -> str:
    """The stable 16-hex fingerprint of a finding: the same weakness in two audits matches.

    >>> finding_fingerprint("evasion", "low-robust-accuracy")
    'f7a6a9b1e670834b'
    """
    text = "\0".join([check, kind, location or ""])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Metric:
    """One number with its evidence: a 95% interval (and its method) for proportions."""

    value: float | None
    ci: tuple[float, float] | None = None
    ci_method: str | None = None
    n: int | None = None
    higher_is_better: bool | None = None
    unit: str | None = None
    label: str | None = None

    @classmethod
    def proportion(
        cls, k: int, n: int, *, higher_is_better: bool | None = None, label: str | None = None
    ) -> Metric:
        """``k / n`` with its exact (Clopper–Pearson) 95% interval.

        >>> m = Metric.proportion(42, 100)
        >>> m.value, [round(b, 3) for b in m.ci], m.ci_method
        (0.42, [0.322, 0.523], 'clopper-pearson')
        """
        from bastion.attacks.inference.metrics import clopper_pearson

        if n < 1:
            return cls(None, n=0, higher_is_better=higher_is_better, label=label)
        lo, hi = clopper_pearson(int(k), int(n))
        return cls(
            k / n,
            ci=(float(lo), float(hi)),
            ci_method="clopper-pearson",
            n=int(n),
            higher_is_better=higher_is_better,
            label=label,
        )

    def to_dict(self) -> dict[str, Any]:
        value = None if self.value is None or not math.isfinite(self.value) else float(self.value)
        return {
            "value": value,
            "ci": None if self.ci is None else [float(self.ci[0]), float(self.ci[1])],
            "ci_method": self.ci_method,
            "n": self.n,
            "higher_is_better": self.higher_is_better,
            "unit": self.unit,
            "label": self.label,
        }


@dataclass(frozen=True)
class Requirement:
    """Why a check cannot run, and what would enable it (shown as ``not_run``)."""

    reason: str
    enable: str | None = None


@dataclass
class CheckResult:
    """What a check found. ``status`` is ``passed`` or ``failed`` for a check that ran."""

    status: Status
    metrics: dict[str, Metric] = field(default_factory=dict)
    findings: list[Any] = field(default_factory=list)  # bastion.audit.findings.Finding
    plots: list[dict[str, Any]] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    summary: str | None = None
    reason: str | None = None
    enable: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class AuditContext:
    """Everything a check may use. Checks read it and never change it.

    ``model`` is a :class:`bastion.models.base.Classifier` (``None`` when the model could not be
    loaded, e.g. refused by the scanner); ``train`` and ``test`` are
    :class:`bastion.data.loaders.Dataset` (``train`` is the member set of the membership checks).
    ``threat`` is the audit's :class:`bastion.threat.ThreatModel` plus ``query_budget``,
    ``sensitive`` and ``time_budget_s``. ``settings`` holds per-check settings by check name.
    ``executor`` is the audit's :class:`~bastion.audit.executor.Executor`: a check may split its
    own work over it (``executor.map(fn, units, shared=...)``, each unit seeded by
    :meth:`unit_seed`); on a worker it is the same Ray cluster, or in-process.

    Tabular audits: ``feature_names`` are the model's input columns (``None`` unless the data
    came as named tables), ``contract`` the audit's
    :class:`~bastion.data.contracts.TableContract` and ``schema`` its
    :class:`~bastion.data.tabular.FeatureSchema` over those columns (both ``None`` without a
    contract): the rules every attack on the table respects. ``data_paths`` are the files of
    the data roles (``train``, ``test``), for checks that read a table as it is.
    """

    seed: int = 0
    model: Any = None
    model_path: Path | None = None
    model_info: dict[str, Any] = field(default_factory=dict)
    train: Any = None
    test: Any = None
    threat: Any = None
    query_budget: int | None = None
    sensitive: tuple[str, ...] = ("train",)
    time_budget_s: float | None = None
    domain: Literal["image", "tabular", "other"] = "other"
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    signature_key: Path | None = None
    output_policy: Any = None
    device: str = "cpu"
    progress: Callable[[str, float], None] | None = None
    #: runs a check's own units (evasion shards, reference models) where the audit runs
    executor: Executor = field(default_factory=InProcessExecutor)
    feature_names: tuple[str, ...] | None = None
    contract: Any = None
    schema: Any = None
    data_paths: dict[str, Path] = field(default_factory=dict)

    def check_settings(self, name: str) -> Mapping[str, Any]:
        return self.settings.get(name, {})

    def unit_seed(self, check: str, index: int = 0) -> int:
        """A seed for one unit of work, fixed by the audit seed, the check and the unit's index,
        so results never depend on how work was split or in which order it finished."""
        digest = hashlib.sha256(f"{self.seed}\0{check}\0{index}".encode()).digest()
        return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class Check(ABC):
    """One assessment. Subclasses set the class attributes and implement :meth:`run`.

    :meth:`requires` returns a :class:`Requirement` when the context lacks what the check needs
    (capabilities, data, a threat-model field); the runner then records ``not_run`` with the
    reason and never calls :meth:`run`. :meth:`inputs` returns what the result depends on (besides
    the model and data digests and the seed, which the runner adds): the resume key.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    threat: ClassVar[str]
    practices: ClassVar[tuple[str, ...]]
    #: Bump when the check's method changes so older audits are known to be stale.
    version: ClassVar[int] = 1
    #: Whether the check needs a loaded model. When the model could not be loaded (refused by
    #: the scanner, say), the plan records such checks as ``not_run`` with the reason.
    needs_model: ClassVar[bool] = True
    #: The check's settings and their defaults. The audit configuration may set only these keys
    #: (others are refused); the runner fills ``ctx.settings[name]`` with defaults and overrides.
    defaults: ClassVar[Mapping[str, Any]] = {}

    def requires(self, ctx: AuditContext) -> Requirement | None:
        return None

    def inputs(self, ctx: AuditContext) -> dict[str, Any]:
        return dict(ctx.check_settings(self.name))

    @abstractmethod
    def run(self, ctx: AuditContext) -> CheckResult: ...


#: Every check by name, in the order audits run and reports show them.
CATALOGUE: dict[str, type[Check]] = {}


def register(cls: type[Check]) -> type[Check]:
    """Class decorator: add a check to :data:`CATALOGUE`."""
    for attr in ("name", "title", "threat", "practices"):
        if not hasattr(cls, attr):
            raise ConfigurationError(f"check {cls.__name__} must define {attr!r}")
    if cls.threat not in THREATS and cls.threat != "data_quality":
        raise ConfigurationError(f"check {cls.name!r}: unknown threat {cls.threat!r}")
    unknown = set(cls.practices) - set(PRACTICES)
    if unknown:
        raise ConfigurationError(f"check {cls.name!r}: unknown practices {sorted(unknown)}")
    if cls.name in CATALOGUE and CATALOGUE[cls.name] is not cls:
        raise ConfigurationError(f"two checks are named {cls.name!r}")
    CATALOGUE[cls.name] = cls
    return cls
