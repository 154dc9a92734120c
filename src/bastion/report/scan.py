"""``bastion scan --format html``: the scan of model files as a self-contained page."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from bastion.report.templating import SEVERITY_ORDER, render_template

__all__ = ["render_scan_html"]

_VERDICT_CSS = {"clean": "passed", "unsafe": "failed", "error": "error", "skipped": "not-run"}
_VERDICT_SYMBOL = {"clean": "✓", "unsafe": "✗", "error": "!", "skipped": "○"}


def _count(scan: dict[str, Any]) -> int:
    return len(scan.get("findings", [])) + sum(_count(m) for m in scan.get("members", []))


def _files(scans: list[dict[str, Any]], depth: int = 0) -> Iterator[dict[str, Any]]:
    for scan in scans:
        yield {**scan, "depth": depth, "n_findings": _count(scan)}
        yield from _files(scan.get("members", []), depth + 1)


def _rank(severity: str) -> int:
    return SEVERITY_ORDER.index(severity) if severity in SEVERITY_ORDER else len(SEVERITY_ORDER)


def render_scan_html(report: dict[str, Any]) -> str:
    """The page of a scan report (``ScanReport.to_dict()``): files, then findings by severity."""
    files = list(_files(report.get("files", [])))
    findings = [
        {**f, "where": scan["path"],
         "target": ".".join(p for p in (f.get("module"), f.get("name")) if p) or f["operator"]}
        for scan in files for f in scan.get("findings", [])
    ]
    findings.sort(key=lambda f: _rank(f["severity"]))
    counts = report.get("counts", {})
    overall = ("unsafe" if counts.get("unsafe") else "error" if counts.get("error")
               else "clean" if counts.get("clean") else "skipped")
    cards = [(str(counts.get(k, 0)), k) for k in ("clean", "unsafe", "error", "skipped")]
    return render_template(
        "scan.html.j2",
        title="bastion scan",
        overall=overall,
        exit_code=report.get("exit_code"),
        counts=counts,
        cards=cards,
        files=files,
        n_files=len(report.get("files", [])),
        findings=findings,
        VERDICT_CSS=_VERDICT_CSS,
        VERDICT_SYMBOL=_VERDICT_SYMBOL,
    )
