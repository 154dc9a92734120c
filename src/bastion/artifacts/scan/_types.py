"""Value objects of the scanner: findings, per-file results and the report."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = ["FileScan", "Finding", "ScanReport", "Severity", "Verdict"]


class Severity(enum.IntEnum):
    """How bad a finding is; a file's severity is the worst of its findings."""

    NONE = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()


class Verdict(enum.StrEnum):
    """What the scanner concluded about one file.

    ``clean``: every construct in it is known to be safe. ``unsafe``: at least one finding.
    ``error``: it could not be scanned completely, or a loader would read it in a way the
    scanner cannot follow (never reported clean). ``skipped``: content no loader executes (a
    README, an image): nothing in it is a pickle opcode stream, archive or model format a
    common loader would accept.
    """

    CLEAN = "clean"
    UNSAFE = "unsafe"
    ERROR = "error"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Finding:
    """One construct that would run code, or that the scanner could not rule out.

    ``operator`` is the pickle opcode (``GLOBAL``, ``STACK_GLOBAL``, ``REDUCE``...) or the
    format-level construct (``safetensors-header``, ``onnx-external-data``, ``keras-layer``);
    ``module``/``name`` the callable or object concerned; ``position`` the byte offset of the
    opcode (or of the record) inside the member named by the enclosing :class:`FileScan`.
    """

    operator: str
    module: str
    name: str
    position: int
    severity: Severity
    why: str

    @property
    def target(self) -> str:
        if self.module and self.name:
            return f"{self.module}.{self.name}"
        return self.module or self.name

    def to_dict(self) -> dict[str, object]:
        return {
            "operator": self.operator,
            "module": self.module,
            "name": self.name,
            "position": self.position,
            "severity": self.severity.label,
            "why": self.why,
        }


@dataclass(frozen=True)
class FileScan:
    """The result of scanning one file or one member of a container.

    ``path`` names members of containers as ``outer.zip!inner/data.pkl``; ``members`` holds the
    scans of a container's members (their findings are also counted in the container's
    verdict and severity); ``error`` says why a file could not be scanned completely.
    """

    path: str
    format: str
    verdict: Verdict
    severity: Severity
    findings: tuple[Finding, ...] = ()
    error: str | None = None
    members: tuple[FileScan, ...] = ()

    @property
    def clean(self) -> bool:
        return self.verdict is Verdict.CLEAN

    def all_findings(self) -> list[tuple[str, Finding]]:
        """Every finding of this file and its members, with the path where it was found."""
        out = [(self.path, f) for f in self.findings]
        for member in self.members:
            out.extend(member.all_findings())
        return out

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "format": self.format,
            "verdict": self.verdict.value,
            "severity": self.severity.label,
            "findings": [f.to_dict() for f in self.findings],
            "error": self.error,
            "members": [m.to_dict() for m in self.members],
        }


@dataclass(frozen=True)
class ScanReport:
    """The scans of several files and the exit code they add up to.

    Exit codes: 0 every scanned file is clean, 1 something is unsafe, 2 a file could not be
    scanned (and nothing is unsafe), 3 nothing was scanned (every file skipped, or none given).
    With ``strict``, a skipped file (a format the scanner does not read) also exits 2.
    """

    files: tuple[FileScan, ...] = field(default_factory=tuple)
    strict: bool = False

    @property
    def exit_code(self) -> int:
        verdicts = {f.verdict for f in self.files}
        if Verdict.UNSAFE in verdicts:
            return 1
        if Verdict.ERROR in verdicts or (self.strict and Verdict.SKIPPED in verdicts):
            return 2
        if Verdict.CLEAN not in verdicts:
            return 3
        return 0

    @property
    def counts(self) -> dict[str, int]:
        out = {v.value: 0 for v in Verdict}
        for f in self.files:
            out[f.verdict.value] += 1
        return out

    def to_dict(self) -> dict[str, object]:
        return {
            "exit_code": self.exit_code,
            "strict": self.strict,
            "counts": self.counts,
            "files": [f.to_dict() for f in self.files],
        }


def combine(
    path: str,
    fmt: str,
    findings: list[Finding],
    *,
    error: str | None = None,
    members: list[FileScan] | None = None,
    skipped: bool = False,
) -> FileScan:
    """Build a :class:`FileScan` whose verdict follows the fail-closed rules."""
    members = members or []
    severity = max(
        [f.severity for f in findings] + [m.severity for m in members], default=Severity.NONE
    )
    member_verdicts = {m.verdict for m in members}
    if findings or Verdict.UNSAFE in member_verdicts:
        verdict = Verdict.UNSAFE
    elif error is not None or Verdict.ERROR in member_verdicts:
        verdict = Verdict.ERROR
        if error is None:
            error = "a member could not be scanned"
    elif skipped:
        verdict = Verdict.SKIPPED
    else:
        verdict = Verdict.CLEAN
    return FileScan(
        path=path,
        format=fmt,
        verdict=verdict,
        severity=Severity(severity),
        findings=tuple(findings),
        error=error,
        members=tuple(members),
    )
