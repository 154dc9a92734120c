"""Writers of assessment reports: ``report.json`` and a self-contained ``report.html``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bastion import __version__
from bastion._io import atomic_write_json, atomic_write_text
from bastion.report.document import json_safe
from bastion.report.html import (
    esc,
    findings_html,
    line_chart_svg,
    render_html_page,
    table_html,
)

__all__ = ["findings_markdown", "findings_sarif", "json_safe", "write_evasion_report"]


def write_evasion_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` for an evasion evaluation's ``to_dict()``."""
    out = Path(out_dir)
    doc = json_safe({"bastion_version": __version__, **report})
    json_path = atomic_write_json(out / "report.json", doc)
    html_path = atomic_write_text(out / "report.html", evasion_html(doc))
    return json_path, html_path


def evasion_html(doc: dict[str, Any]) -> str:
    norm, eps = doc["norm"], doc["eps"]
    cards = (
        '<div class="cards">'
        f'<div class="card"><div class="v">{doc["clean_accuracy"]:.1%}</div>'
        '<div class="k">clean accuracy</div></div>'
        f'<div class="card"><div class="v">{doc["robust_accuracy"]:.1%}</div>'
        f'<div class="k">robust accuracy (worst case, {esc(norm)} eps {esc(eps)})</div></div>'
        f'<div class="card"><div class="v">{doc["n"]}</div><div class="k">samples</div></div>'
        f'<div class="card"><div class="v">{doc["seconds"]:.1f}s</div>'
        '<div class="k">evaluation time</div></div></div>'
    )
    rows = [
        [
            name,
            a["robust_accuracy"],
            a["success_rate"],
            a["median_norm"],
            a["queries"],
            a["queries_per_sample"],
            a.get("median_queries_successful"),
            a["seconds"],
        ]
        for name, a in doc["attacks"].items()
    ]
    headers = ["attack", "robust acc.", "success rate", "median norm", "queries"]
    headers += ["queries/sample", "median queries to succeed", "s"]
    table = table_html(headers, rows)
    points = doc["curve"]["points"]
    if points:
        chart = line_chart_svg(
            {
                doc["curve"]["attack"] or "attack": [
                    (p["eps"], p["robust_accuracy"]) for p in points
                ]
            },
            x_label=f"eps ({norm})",
            y_label="robust accuracy",
        )
    else:
        chart = '<p class="muted">No robustness curve (no eps-bounded attack was run).</p>'
    warnings = "".join(f'<div class="warn">{esc(w)}</div>' for w in doc["warnings"]) or (
        '<p class="muted">No signs of gradient masking were found.</p>'
    )
    body = (
        cards
        + "<h2>Attacks</h2>"
        + table
        + "<h2>Robustness curve</h2>"
        + chart
        + "<h2>Reliability</h2>"
        + warnings
        + "<h2>Findings</h2>"
        + findings_html(doc["findings"])
    )
    subtitle = f"model {doc.get('model') or '(unnamed)'} · bastion {doc.get('bastion_version', '')}"
    return render_html_page("Evasion robustness report", body, subtitle)


def findings_markdown(findings: Sequence[dict[str, Any]]) -> str:
    """Findings as a Markdown list."""
    if not findings:
        return "No findings.\n"
    lines = []
    for f in findings:
        ids = ", ".join([*f["atlas"], *f["owasp"]])
        lines.append(f"- **[{f['severity'].upper()}] {f['title']}** ({f['id']}; {ids})")
        if f.get("remediation"):
            lines.append(f"  - Remediation: {f['remediation']}")
    return "\n".join(lines) + "\n"


_SARIF_LEVEL = {
    "info": "note",
    "low": "note",
    "medium": "warning",
    "high": "error",
    "critical": "error",
}


def findings_sarif(findings: Sequence[dict[str, Any]], *, artifact: str = "") -> dict[str, Any]:
    """Findings as a SARIF 2.1.0 log."""
    rules: dict[str, dict[str, Any]] = {}
    results = []
    for f in findings:
        rules.setdefault(
            f["id"],
            {
                "id": f["id"],
                "shortDescription": {"text": f["title"]},
                "help": {"text": f.get("remediation", "")},
                "properties": {"tags": [*f["atlas"], *f["owasp"], f["threat"]]},
            },
        )
        result: dict[str, Any] = {
            "ruleId": f["id"],
            "level": _SARIF_LEVEL.get(f["severity"], "warning"),
            "message": {"text": f["title"]},
            "properties": {"severity": f["severity"], "evidence": f.get("evidence", {})},
        }
        if artifact:
            result["locations"] = [{"physicalLocation": {"artifactLocation": {"uri": artifact}}}]
        results.append(result)
    return {
        "version": "2.1.0",
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "bastion",
                        "version": __version__,
                        "rules": list(rules.values()),
                    }
                },
                "results": results,
            }
        ],
    }
