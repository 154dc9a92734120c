"""Audits over time: diffs against a baseline, suppressions with an owner and an expiry, CI gates.

A finding is recognised across audits by its ``fingerprint`` (check, finding kind and the
model-independent part of its location), so retraining a model does not make its old weaknesses
look new. A metric change is called a regression or an improvement only when each audit's value
lies outside the other's 95% interval: a change both intervals explain is noise.

Example:
    >>> old = {"checks": [{"name": "evasion", "status": "failed", "findings": [
    ...     {"id": "evasion.low-robust-accuracy", "fingerprint": "a" * 16, "title": "weak",
    ...      "severity": "high"}],
    ...     "metrics": {"robust_accuracy": {"value": 0.42, "ci": [0.32, 0.52],
    ...                                     "higher_is_better": True}}}]}
    >>> new = {"checks": [{"name": "evasion", "status": "passed", "findings": [],
    ...     "metrics": {"robust_accuracy": {"value": 0.45, "ci": [0.35, 0.55],
    ...                                     "higher_is_better": True}}}]}
    >>> d = diff_documents(old, new)
    >>> [f.fingerprint for f in d.fixed], d.metrics[0].change
    (['aaaaaaaaaaaaaaaa'], 'within-intervals')
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from bastion.audit.findings import Severity
from bastion.errors import ConfigurationError, InputError

__all__ = [
    "AuditDiff",
    "FailOn",
    "FindingChange",
    "MetricChange",
    "Suppression",
    "SuppressionReport",
    "apply_suppressions",
    "diff_documents",
    "failing_findings",
    "iter_findings",
    "load_suppressions",
    "parse_fail_on",
    "recount_verdict",
]

_FINGERPRINT = re.compile(r"^[0-9a-f]{16}$")


def iter_findings(doc: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every finding of an audit document with the name of its check."""
    for check in doc.get("checks", []):
        for finding in check.get("findings", []):
            yield str(check.get("name", "")), finding


# ------------------------------------------------------------------------------------ diffs


@dataclass(frozen=True)
class FindingChange:
    """One finding of a diff: ``new`` (only in the new audit), ``fixed`` or ``unchanged``."""

    status: Literal["new", "fixed", "unchanged"]
    fingerprint: str
    id: str
    check: str
    title: str
    severity: str
    location: str | None = None
    severity_before: str | None = None


@dataclass(frozen=True)
class MetricChange:
    """A metric present in both audits, with both intervals and what the change means.

    ``change`` is ``regression`` / ``improvement`` when each value lies outside the other's
    interval (the direction from ``higher_is_better``), ``changed`` when it does but the metric
    has no preferred direction, ``within-intervals`` when the intervals explain the change,
    ``no-interval`` when a value changed but neither audit gives an interval, and ``same``.
    """

    check: str
    metric: str
    before: float | None
    after: float | None
    ci_before: tuple[float, float] | None
    ci_after: tuple[float, float] | None
    change: Literal[
        "regression", "improvement", "changed", "within-intervals", "no-interval", "same"
    ]

    @property
    def delta(self) -> float | None:
        if self.before is None or self.after is None:
            return None
        return self.after - self.before


@dataclass(frozen=True)
class AuditDiff:
    """What changed between two audits."""

    new: tuple[FindingChange, ...]
    fixed: tuple[FindingChange, ...]
    unchanged: tuple[FindingChange, ...]
    metrics: tuple[MetricChange, ...]
    checks: tuple[dict[str, Any], ...] = ()
    model_before: str | None = None
    model_after: str | None = None

    @property
    def regressions(self) -> tuple[MetricChange, ...]:
        return tuple(m for m in self.metrics if m.change == "regression")

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "bastion.audit-diff/1",
            "model": {"before": self.model_before, "after": self.model_after},
            "summary": {
                "new": len(self.new),
                "fixed": len(self.fixed),
                "unchanged": len(self.unchanged),
                "regressions": len(self.regressions),
            },
            "findings": {
                "new": [asdict(f) for f in self.new],
                "fixed": [asdict(f) for f in self.fixed],
                "unchanged": [asdict(f) for f in self.unchanged],
            },
            "metrics": [
                {
                    **asdict(m),
                    "ci_before": list(m.ci_before) if m.ci_before else None,
                    "ci_after": list(m.ci_after) if m.ci_after else None,
                    "delta": m.delta,
                }
                for m in self.metrics
            ],
            "checks": list(self.checks),
        }


def _interval(metric: Mapping[str, Any]) -> tuple[float, float] | None:
    ci = metric.get("ci")
    if not ci or len(ci) != 2 or ci[0] is None or ci[1] is None:
        return None
    return float(ci[0]), float(ci[1])


def _value(metric: Mapping[str, Any]) -> float | None:
    v = metric.get("value")
    return None if v is None else float(v)


def _metric_change(check: str, name: str, old: Mapping[str, Any], new: Mapping[str, Any]
                   ) -> MetricChange:
    b, a = _value(old), _value(new)
    ci_b, ci_a = _interval(old), _interval(new)
    change: Any
    if b == a:
        change = "same"
    elif b is None or a is None:
        change = "changed"
    elif ci_b is None and ci_a is None:
        change = "no-interval"
    else:
        outside_old = ci_b is None or not ci_b[0] <= a <= ci_b[1]
        outside_new = ci_a is None or not ci_a[0] <= b <= ci_a[1]
        if not (outside_old and outside_new):
            change = "within-intervals"
        else:
            better = new.get("higher_is_better", old.get("higher_is_better"))
            if better is None:
                change = "changed"
            else:
                change = "improvement" if (a > b) == bool(better) else "regression"
    return MetricChange(check, name, b, a, ci_b, ci_a, change)


def diff_documents(old: Mapping[str, Any], new: Mapping[str, Any]) -> AuditDiff:
    """Compare two audit documents: findings by fingerprint, metrics per check."""
    before = {f["fingerprint"]: (c, f) for c, f in iter_findings(old)}
    after = {f["fingerprint"]: (c, f) for c, f in iter_findings(new)}

    def change(status: Any, fp: str, pair: tuple[str, dict[str, Any]],
               prior: tuple[str, dict[str, Any]] | None = None) -> FindingChange:
        check, f = pair
        return FindingChange(
            status=status, fingerprint=fp, id=str(f.get("id", "")), check=check,
            title=str(f.get("title", "")), severity=str(f.get("severity", "")),
            location=f.get("location"),
            severity_before=None if prior is None else str(prior[1].get("severity", "")),
        )

    def by_severity(items: Iterable[FindingChange]) -> tuple[FindingChange, ...]:
        def rank(f: FindingChange) -> int:
            try:
                return -Severity(f.severity).rank
            except ValueError:
                return 0
        return tuple(sorted(items, key=lambda f: (rank(f), f.check, f.id, f.fingerprint)))

    new_f = by_severity(change("new", fp, p) for fp, p in after.items() if fp not in before)
    fixed = by_severity(change("fixed", fp, p) for fp, p in before.items() if fp not in after)
    same = by_severity(
        change("unchanged", fp, p, before[fp]) for fp, p in after.items() if fp in before
    )

    old_checks = {c.get("name"): c for c in old.get("checks", [])}
    metrics: list[MetricChange] = []
    statuses: list[dict[str, Any]] = []
    for c in new.get("checks", []):
        name = c.get("name")
        prior = old_checks.get(name)
        statuses.append({
            "check": name,
            "before": None if prior is None else prior.get("status"),
            "after": c.get("status"),
        })
        if prior is None:
            continue
        old_metrics = prior.get("metrics", {})
        for metric, value in sorted(c.get("metrics", {}).items()):
            if metric in old_metrics:
                metrics.append(_metric_change(str(name), metric, old_metrics[metric], value))
    for name, prior in old_checks.items():
        if name not in {s["check"] for s in statuses}:
            statuses.append({"check": name, "before": prior.get("status"), "after": None})
    return AuditDiff(
        new=new_f, fixed=fixed, unchanged=same, metrics=tuple(metrics), checks=tuple(statuses),
        model_before=(old.get("model") or {}).get("digest"),
        model_after=(new.get("model") or {}).get("digest"),
    )


# ----------------------------------------------------------------------------- suppressions


@dataclass(frozen=True)
class Suppression:
    """An accepted risk: which finding, why, who owns it and until when."""

    fingerprint: str
    reason: str
    owner: str
    expires: dt.date

    def active(self, today: dt.date) -> bool:
        return today <= self.expires

    def to_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint, "reason": self.reason, "owner": self.owner,
            "expires": self.expires.isoformat(),
        }


@dataclass(frozen=True)
class SuppressionReport:
    """Which suppressions applied, which had expired, and which matched nothing (stale)."""

    applied: tuple[Suppression, ...] = ()
    expired: tuple[Suppression, ...] = ()
    stale: tuple[Suppression, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "applied": [s.to_dict() for s in self.applied],
            "expired": [s.to_dict() for s in self.expired],
            "stale": [s.to_dict() for s in self.stale],
        }


_SUPPRESSION_KEYS = {"fingerprint", "reason", "owner", "expires"}


def load_suppressions(path: str | Path) -> tuple[Suppression, ...]:
    """Read ``bastion-suppressions.yaml``: a list (or ``suppressions:`` list) of entries with
    ``fingerprint``, ``reason``, ``owner`` and ``expires`` (a date), all required."""
    import yaml

    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read suppressions file {p}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise InputError(f"suppressions file {p} is not valid YAML: {exc}") from exc
    if isinstance(raw, dict) and set(raw) == {"suppressions"}:
        raw = raw["suppressions"]
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InputError(
            f"{p}: expected a list of suppressions (fingerprint, reason, owner, expires)"
        )
    out: list[Suppression] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw, 1):
        where = f"{p}: suppression {i}"
        if not isinstance(entry, dict):
            raise InputError(f"{where} must be a mapping with fingerprint, reason, owner, expires")
        missing = _SUPPRESSION_KEYS - set(entry)
        unknown = set(entry) - _SUPPRESSION_KEYS
        if missing or unknown:
            parts = []
            if missing:
                parts.append("missing " + ", ".join(sorted(missing)))
            if unknown:
                parts.append("unknown " + ", ".join(sorted(map(str, unknown))))
            raise InputError(f"{where}: {'; '.join(parts)}")
        fp = str(entry["fingerprint"]).strip().lower()
        if not _FINGERPRINT.match(fp):
            raise InputError(f"{where}: fingerprint must be 16 hex digits, got {fp!r}")
        if fp in seen:
            raise InputError(f"{where}: fingerprint {fp} is suppressed twice")
        seen.add(fp)
        reason, owner = str(entry["reason"] or "").strip(), str(entry["owner"] or "").strip()
        if not reason or not owner:
            raise InputError(f"{where}: reason and owner must not be empty")
        expires = entry["expires"]
        if isinstance(expires, dt.datetime):
            expires = expires.date()
        if isinstance(expires, str):
            try:
                expires = dt.date.fromisoformat(expires)
            except ValueError:
                raise InputError(f"{where}: expires must be a date (YYYY-MM-DD)") from None
        if not isinstance(expires, dt.date):
            raise InputError(f"{where}: expires must be a date (YYYY-MM-DD)")
        out.append(Suppression(fp, reason, owner, expires))
    return tuple(out)


def apply_suppressions(
    doc: dict[str, Any], suppressions: Iterable[Suppression], *, today: dt.date | None = None
) -> SuppressionReport:
    """Mark suppressed findings in ``doc`` (in place) and record the suppression report.

    A suppressed finding stays in the report with ``suppressed: {reason, owner, expires}``; an
    expired suppression no longer suppresses and the finding says so
    (``suppression_expired``); a suppression that matches no finding is stale. The document's
    ``suppressions`` section lists all three, and its verdict is recounted without the
    suppressed findings.
    """
    today = today or dt.datetime.now(dt.UTC).date()
    by_fp = {s.fingerprint: s for s in suppressions}
    applied: list[Suppression] = []
    expired: list[Suppression] = []
    matched: set[str] = set()
    for _, finding in iter_findings(doc):
        s = by_fp.get(finding.get("fingerprint", ""))
        finding.pop("suppressed", None)
        finding.pop("suppression_expired", None)
        if s is None:
            continue
        matched.add(s.fingerprint)
        if s.active(today):
            finding["suppressed"] = {"reason": s.reason, "owner": s.owner,
                                     "expires": s.expires.isoformat()}
            if s not in applied:
                applied.append(s)
        else:
            finding["suppression_expired"] = {"reason": s.reason, "owner": s.owner,
                                              "expires": s.expires.isoformat()}
            if s not in expired:
                expired.append(s)
    stale = tuple(s for s in by_fp.values() if s.fingerprint not in matched)
    report = SuppressionReport(tuple(applied), tuple(expired), stale)
    doc["suppressions"] = report.to_dict()
    recount_verdict(doc)
    return report


def recount_verdict(doc: dict[str, Any]) -> None:
    """Recompute the document's verdict without the suppressed findings."""
    from bastion.audit.document import verdict

    doc["verdict"] = verdict(doc.get("checks", []))
    doc["verdict"]["suppressed"] = sum(1 for _, f in iter_findings(doc) if f.get("suppressed"))


# ----------------------------------------------------------------------------------- gates


@dataclass(frozen=True)
class FailOn:
    """A CI gate: fail on findings at or above ``severity``; with ``new_only``, only on findings
    absent from the baseline (``--fail-on new:high``)."""

    severity: Severity
    new_only: bool = False


def parse_fail_on(text: str) -> FailOn:
    """Parse ``high``, ``medium``, ``new:high``, ...

    >>> parse_fail_on("new:high")
    FailOn(severity=<Severity.HIGH: 'high'>, new_only=True)
    """
    raw = text.strip().lower()
    new_only = raw.startswith("new:")
    level = raw[4:] if new_only else raw
    try:
        return FailOn(Severity(level), new_only)
    except ValueError:
        names = ", ".join(s.value for s in Severity)
        raise ConfigurationError(
            f"--fail-on {text!r}: use a severity ({names}), optionally prefixed with 'new:'"
        ) from None


def failing_findings(
    doc: Mapping[str, Any], gate: FailOn, *, baseline: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The unsuppressed findings that make ``gate`` fail (new ones only when asked)."""
    if gate.new_only and baseline is None:
        raise ConfigurationError("--fail-on new:... needs --baseline OLD.json to know what is new")
    known = {f["fingerprint"] for _, f in iter_findings(baseline)} if baseline else set()
    out = []
    for _, f in iter_findings(doc):
        if f.get("suppressed"):
            continue
        try:
            sev = Severity(str(f.get("severity")))
        except ValueError:
            continue
        if sev.rank < gate.severity.rank:
            continue
        if gate.new_only and f.get("fingerprint") in known:
            continue
        out.append(f)
    return out

