"""Findings: what an assessment tells a security team, with taxonomy ids and a remedy."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

__all__ = ["Finding", "Severity"]


class Severity(StrEnum):
    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return list(Severity).index(self)


@dataclass(frozen=True)
class Finding:
    """One finding: ``{id, title, severity, threat, atlas, owasp, evidence, remediation}``."""

    id: str
    title: str
    severity: Severity
    threat: str
    atlas: tuple[str, ...]
    owasp: tuple[str, ...]
    evidence: dict[str, Any] = field(default_factory=dict)
    remediation: str = ""
    #: The model-independent place of the finding (an archive member, a class, a feature).
    location: str | None = None

    @property
    def fingerprint(self) -> str:
        """Stable across audits: ``sha256(check, kind, location)`` from the ``check.kind`` id."""
        from bastion.audit.contract import finding_fingerprint

        check, _, kind = self.id.partition(".")
        return finding_fingerprint(check, kind, self.location)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["severity"] = self.severity.value
        out["atlas"] = list(self.atlas)
        out["owasp"] = list(self.owasp)
        out["fingerprint"] = self.fingerprint
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        return cls(
            id=data["id"],
            title=data["title"],
            severity=Severity(data["severity"]),
            threat=data["threat"],
            atlas=tuple(data["atlas"]),
            owasp=tuple(data["owasp"]),
            evidence=dict(data.get("evidence", {})),
            remediation=data.get("remediation", ""),
            location=data.get("location"),
        )
