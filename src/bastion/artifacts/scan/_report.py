"""Render scan results: a console table, JSON and SARIF 2.1.0."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

from bastion import __version__
from bastion.artifacts.scan._types import FileScan, Finding, ScanReport, Severity, Verdict

__all__ = ["render_json", "render_sarif", "render_table"]

_ATLAS = ["AML.T0010.003", "AML.T0011.000"]
_OWASP = ["ML06"]
_SARIF_LEVEL = {
    Severity.CRITICAL: "error",
    Severity.HIGH: "error",
    Severity.MEDIUM: "warning",
    Severity.LOW: "note",
    Severity.NONE: "none",
}
_STYLE = {
    Verdict.CLEAN: "green",
    Verdict.UNSAFE: "bold red",
    Verdict.ERROR: "yellow",
    Verdict.SKIPPED: "dim",
}


def render_json(report: ScanReport) -> str:
    """The report as indented JSON (verdicts, severities, findings, members, exit code)."""
    return json.dumps(report.to_dict(), indent=2)


def _rule_id(finding: Finding) -> str:
    return f"bastion-scan/{finding.operator.lower()}"


def _results(scan: FileScan) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for where, finding in scan.all_findings():
        outer, _, member = where.partition("!")
        location: dict[str, Any] = {
            "physicalLocation": {
                "artifactLocation": {"uri": outer},
                "region": {"byteOffset": finding.position},
            }
        }
        if member:
            location["logicalLocations"] = [{"name": member, "kind": "member"}]
        out.append({
            "ruleId": _rule_id(finding),
            "level": _SARIF_LEVEL[finding.severity],
            "message": {"text": f"{finding.target}: {finding.why}"},
            "locations": [location],
            "properties": {
                "severity": finding.severity.label,
                "operator": finding.operator,
                "module": finding.module,
                "name": finding.name,
                "member": member,
            },
        })
    if scan.verdict is Verdict.ERROR and not out:
        out.append({
            "ruleId": "bastion-scan/scan-error",
            "level": "error",
            "message": {"text": f"could not be scanned completely: {scan.error}"},
            "locations": [{"physicalLocation": {"artifactLocation": {"uri": scan.path}}}],
        })
    return out


def render_sarif(report: ScanReport) -> str:
    """The report as a SARIF 2.1.0 log (one rule per operator, ATLAS/OWASP ids in properties)."""
    results: list[dict[str, Any]] = []
    for scan in report.files:
        results.extend(_results(scan))
    rule_ids = sorted({r["ruleId"] for r in results})
    rules = [{
        "id": rid,
        "name": rid.split("/", 1)[1],
        "shortDescription": {"text": f"model file construct: {rid.split('/', 1)[1]}"},
        "helpUri": "https://atlas.mitre.org/techniques/AML.T0010.003",
        "properties": {"atlas": _ATLAS, "owasp": _OWASP, "tags": ["security", "ml-supply-chain"]},
    } for rid in rule_ids]
    log = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "bastion-scan",
                "version": __version__,
                "informationUri": "https://github.com/bastion-ml/bastion",
                "rules": rules,
            }},
            "results": results,
            "properties": {"exitCode": report.exit_code, "counts": report.counts},
        }],
    }
    return json.dumps(log, indent=2)


def render_table(report: ScanReport, console: Console) -> None:
    """Print one row per file and one per finding."""
    table = Table(title="bastion scan", show_lines=False)
    # the key column folds (wraps inside the name) rather than being cut with an ellipsis
    table.add_column("file", overflow="fold")
    table.add_column("format")
    table.add_column("verdict")
    table.add_column("severity")
    table.add_column("finding", overflow="fold")
    for scan in report.files:
        style = _STYLE[scan.verdict]
        findings = scan.all_findings()
        first = ""
        if scan.verdict is Verdict.ERROR:
            first = scan.error or _first_error(scan) or ""
        table.add_row(scan.path, scan.format, f"[{style}]{scan.verdict.value}[/]",
                      scan.severity.label if findings else "", first)
        for where, f in findings:
            member = where.partition("!")[2]
            at = f" in {member}" if member else ""
            table.add_row("", "", "", f.severity.label,
                          f"{f.operator} {f.target} @{f.position}{at}: {f.why}")
    console.print(table)
    counts = report.counts
    console.print(
        f"{len(report.files)} file(s): {counts['clean']} clean, {counts['unsafe']} unsafe, "
        f"{counts['error']} error, {counts['skipped']} skipped"
        + (" (skipped: no model format any loader would execute; --strict fails on them)"
           if counts["skipped"] else ""),
        highlight=False,
    )


def _first_error(scan: FileScan) -> str | None:
    if scan.error and scan.error != "a member could not be scanned":
        return scan.error
    for m in scan.members:
        found = _first_error(m)
        if found:
            return f"{m.path}: {found}"
    return scan.error
