"""Promotion policies over signed audits: the registry's gate that reads ``bastion audit``.

A policy says what an audit must show before a model version may take an alias::

    max_severity: medium          # no unsuppressed finding above medium
    min: {robust_accuracy: 0.5}   # metric floors (any check's metric of that name, or check.metric)
    max: {auc: 0.6}               # metric ceilings
    max_age: 30d                  # an older audit is stale

:func:`evaluate_audit` accepts an audit folder only when its attestation verifies against one of
the trusted keys, its subject is the version's files, and the policy holds; otherwise every
reason is named. A metric that is missing, ``null`` or not finite fails its gate.

Example:
    >>> p = AuditPolicy.from_mapping({"max_severity": "medium", "min": {"robust_accuracy": 0.5},
    ...                               "max_age": "30d"})
    >>> p.max_age.days, p.minimums
    (30, {'robust_accuracy': 0.5})
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.audit.baseline import iter_findings
from bastion.audit.findings import Severity
from bastion.errors import ConfigurationError, InputError

__all__ = ["AuditGateResult", "AuditPolicy", "evaluate_audit", "metric_value", "parse_age"]

_AGE = re.compile(r"^\s*(\d+)\s*([dhw])\s*$")


def parse_age(text: str | int | dt.timedelta) -> dt.timedelta:
    """``30d``, ``12h``, ``2w`` (or a number of days) as a timedelta.

    >>> parse_age("2w").days
    14
    """
    if isinstance(text, dt.timedelta):
        return text
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return dt.timedelta(days=text)
    m = _AGE.match(str(text))
    if not m:
        raise ConfigurationError(f"max_age {text!r}: use a number and d, h or w, e.g. 30d")
    n, unit = int(m.group(1)), m.group(2)
    return {"d": dt.timedelta(days=n), "h": dt.timedelta(hours=n), "w": dt.timedelta(weeks=n)}[
        unit
    ]


@dataclass(frozen=True)
class AuditPolicy:
    """What an audit must show for a promotion."""

    max_severity: Severity | None = None
    minimums: dict[str, float] = field(default_factory=dict)
    maximums: dict[str, float] = field(default_factory=dict)
    max_age: dt.timedelta | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> AuditPolicy:
        unknown = set(data) - {"max_severity", "min", "max", "max_age"}
        if unknown:
            raise ConfigurationError(
                f"unknown audit policy keys {sorted(unknown)}: use max_severity, min, max, max_age"
            )
        sev = data.get("max_severity")
        try:
            severity = Severity(str(sev).lower()) if sev is not None else None
        except ValueError:
            raise ConfigurationError(
                f"max_severity {sev!r}: use one of {', '.join(s.value for s in Severity)}"
            ) from None

        def bounds(key: str) -> dict[str, float]:
            raw = data.get(key) or {}
            if not isinstance(raw, Mapping):
                raise ConfigurationError(f"{key} must map metric names to numbers")
            out = {}
            for name, value in raw.items():
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    raise ConfigurationError(f"{key}.{name} must be a number") from None
                if not math.isfinite(number):
                    raise ConfigurationError(f"{key}.{name} must be finite")
                out[str(name)] = number
            return out

        age = data.get("max_age")
        return cls(severity, bounds("min"), bounds("max"),
                   parse_age(age) if age is not None else None)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AuditPolicy:
        import yaml

        p = Path(path)
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise InputError(f"cannot read audit policy {p}: {exc.strerror or exc}") from exc
        except yaml.YAMLError as exc:
            raise InputError(f"audit policy {p} is not valid YAML: {exc}") from exc
        if not isinstance(raw, Mapping):
            raise InputError(f"audit policy {p} must be a mapping")
        return cls.from_mapping(raw)

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_severity": self.max_severity.value if self.max_severity else None,
            "min": dict(self.minimums),
            "max": dict(self.maximums),
            "max_age": None if self.max_age is None
            else f"{self.max_age.total_seconds() / 86400:g}d",
        }


def metric_value(doc: Mapping[str, Any], name: str) -> float | None:
    """The value of metric ``name`` (or ``check.metric``) in an audit document, else None
    (the registry's gates read metrics the same way)."""
    from bastion.artifacts.registry.gates import lookup_metric

    return lookup_metric(doc, name)


@dataclass(frozen=True)
class AuditGateResult:
    """The decision, every reason against it, and which audit it was made from."""

    passed: bool
    reasons: tuple[str, ...]
    used: dict[str, Any]


def _parse_created(text: Any) -> dt.datetime | None:
    try:
        when = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def evaluate_audit(
    audit: str | os.PathLike[str] | Mapping[str, Any], *, keys: Iterable[Any],
    manifest: Mapping[str, str], policy: AuditPolicy, now: dt.datetime | None = None,
) -> AuditGateResult:
    """Decide whether an audit (a folder, or a submission from
    :func:`~bastion.audit.attest.read_submission`) lets a version with files ``manifest`` pass.
    """
    import hashlib
    import json

    from bastion.audit.attest import read_submission, verify_submission

    source = "submitted audit" if isinstance(audit, Mapping) else str(audit)
    used: dict[str, Any] = {"audit": source}
    if isinstance(audit, Mapping):
        submission: Mapping[str, Any] = audit
    else:
        try:
            submission = read_submission(audit)
        except InputError as exc:
            return AuditGateResult(False, (str(exc),), used)
    key_list = list(keys)
    if not key_list:
        return AuditGateResult(False, ("no trusted key is configured to check the audit's"
                                       " attestation (--trusted-key)",), used)
    verification = None
    for key in key_list:
        verification = verify_submission(submission, key=key, manifest=manifest)
        if verification.ok or verification.problem != "signature":
            break
    if verification is None or not verification.ok:
        if verification is None:  # pragma: no cover - key_list is not empty
            return AuditGateResult(False, ("no key was tried",), used)
        reason = verification.message
        if verification.problem == "signature":
            reason = f"the audit is not signed by a trusted key: {verification.message}"
        elif verification.problem == "model":
            reason = f"the audit is for another model: {verification.message}"
        return AuditGateResult(False, (reason,), used)
    report_bytes = str(submission["report"]).encode("utf-8")
    try:
        doc = json.loads(report_bytes)
    except ValueError:
        return AuditGateResult(False, ("the signed report is not JSON",), used)
    att = verification.attestation
    used.update({
        "report_sha256": hashlib.sha256(report_bytes).hexdigest(),
        "created": doc.get("created"),
        "key": att.key_hint if att else None,
        "verdict": (doc.get("verdict") or {}).get("status"),
        "catalogue_version": doc.get("catalogue_version"),
    })
    return AuditGateResult(*_policy_reasons(doc, policy, now), used)


def _policy_reasons(doc: Mapping[str, Any], policy: AuditPolicy, now: dt.datetime | None
                    ) -> tuple[bool, tuple[str, ...]]:
    reasons: list[str] = []
    now = now or dt.datetime.now(dt.UTC)
    if policy.max_age is not None:
        created = _parse_created(doc.get("created"))
        if created is None:
            reasons.append("the audit has no valid creation date, so its age is unknown")
        elif now - created > policy.max_age:
            age_days = (now - created).total_seconds() / 86400
            reasons.append(
                f"the audit is stale: made {age_days:.0f} days ago, max_age is "
                f"{policy.max_age.total_seconds() / 86400:g} days; re-run bastion audit"
            )
    if policy.max_severity is not None:
        worst = [
            f for _, f in iter_findings(doc)
            if not f.get("suppressed") and str(f.get("severity")) in {s.value for s in Severity}
            and Severity(str(f["severity"])).rank > policy.max_severity.rank
        ]
        for f in worst:
            reasons.append(
                f"finding {f.get('id')} ({f.get('fingerprint')}) is {f.get('severity')},"
                f" above max_severity {policy.max_severity.value}"
            )
    for name, floor in policy.minimums.items():
        value = metric_value(doc, name)
        if value is None or not math.isfinite(value):
            reasons.append(f"metric {name} is missing or not finite (needs >= {floor:g})")
        elif value < floor:
            reasons.append(f"{name} = {value:.4g} is below the minimum {floor:g}")
    for name, ceiling in policy.maximums.items():
        value = metric_value(doc, name)
        if value is None or not math.isfinite(value):
            reasons.append(f"metric {name} is missing or not finite (needs <= {ceiling:g})")
        elif value > ceiling:
            reasons.append(f"{name} = {value:.4g} is above the maximum {ceiling:g}")
    errored = [str(c.get("name")) for c in doc.get("checks", []) if c.get("status") == "error"]
    if errored:
        reasons.append(f"check(s) {', '.join(errored)} ended in error; the audit is incomplete")
    return not reasons, tuple(reasons)
