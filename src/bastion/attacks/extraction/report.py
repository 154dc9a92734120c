"""The extraction report: findings, ``report.json`` and a self-contained ``report.html``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bastion import __version__
from bastion._io import atomic_write_json, atomic_write_text
from bastion.audit.findings import Finding, Severity
from bastion.report.html import esc, findings_html, line_chart_svg, render_html_page, table_html
from bastion.threat import ATLAS, OWASP

__all__ = ["extraction_findings", "extraction_html", "write_extraction_report"]


def extraction_findings(doc: dict[str, Any]) -> list[Finding]:
    """Findings for an extraction report document (see :func:`write_extraction_report`)."""
    attack = doc["attack"]
    fid = attack.get("fidelity")
    if fid is None:
        return []
    severity = Severity.HIGH if fid >= 0.9 else Severity.MEDIUM if fid >= 0.7 else Severity.LOW
    evidence: dict[str, Any] = {
        "fidelity": fid,
        "queries": attack["queries"],
        "query_budget": attack["query_budget"],
        "surrogate_accuracy": attack.get("accuracy"),
        "victim_accuracy": attack.get("victim_accuracy"),
        "strategy": doc.get("strategy"),
        "access": doc.get("access"),
    }
    transfer = doc.get("transfer")
    if transfer:
        evidence["transfer_rate"] = transfer["transfer_rate"]
    findings = [
        Finding(
            id="BASTION-EXTRACTION-001",
            title=(
                f"A copy of the model agrees with it on {fid:.1%} of held-out inputs after "
                f"{attack['queries']} queries ({doc.get('strategy')}, {doc.get('access')})"
            ),
            severity=severity,
            threat="model stealing",
            atlas=(ATLAS["model_extraction"],),
            owasp=(OWASP["model_theft"],),
            evidence=evidence,
            remediation=(
                "Limit queries per client (rate limits, quotas) and monitor for extraction "
                "patterns; return labels or top-1 scores rounded to few decimals instead of "
                "full probability vectors; evaluate the chosen output policy with --harden."
            ),
        )
    ]
    if transfer and transfer["transfer_rate"] >= 0.3:
        findings.append(
            Finding(
                id="BASTION-EXTRACTION-002",
                title=(
                    f"Adversarial examples crafted on the copy fool the model on "
                    f"{transfer['transfer_rate']:.1%} of inputs (eps {transfer['eps']})"
                ),
                severity=Severity.MEDIUM,
                threat="evasion",
                atlas=(ATLAS["black_box_transfer"], ATLAS["model_extraction"]),
                owasp=(OWASP["input_manipulation"], OWASP["model_theft"]),
                evidence={"transfer": transfer},
                remediation=(
                    "A stolen surrogate turns black-box access into white-box attacks: harden "
                    "the model itself (adversarial training) as well as its API."
                ),
            )
        )
    return findings


def extraction_html(doc: dict[str, Any]) -> str:
    """The self-contained HTML page of an extraction report document."""
    a = doc["attack"]

    def pct(v: float | None) -> str:
        return "—" if v is None else f"{v:.1%}"

    cards = [
        (pct(a.get("fidelity")), "fidelity (agreement with the model)"),
        (f"{a['queries']} / {a['query_budget']}", "queries used / budget"),
        (pct(a.get("accuracy")), "copy's accuracy"),
        (pct(a.get("victim_accuracy")), "model's accuracy"),
    ]
    if doc.get("transfer"):
        cards.append((pct(doc["transfer"]["transfer_rate"]), "transfer rate of adv. examples"))
    body = ['<div class="cards">']
    for value, key in cards:
        body.append(
            f'<div class="card"><div class="v">{esc(value)}</div>'
            f'<div class="k">{esc(key)}</div></div>'
        )
    body.append("</div>")
    history = [(float(q), float(f)) for q, f in a.get("history", [])]
    body.append("<h2>Fidelity vs queries</h2>")
    body.append(
        line_chart_svg({str(doc.get("strategy")): history}, x_label="queries", y_label="fidelity")
    )
    body.append(table_html(["queries", "fidelity"], [[int(q), f] for q, f in history]))
    if doc.get("hardening"):
        body.append("<h2>Output hardening</h2>")
        rows = []
        for row in doc["hardening"]:
            for label, r in row["attacks"].items():
                rows.append(
                    [
                        row["policy"],
                        row["accuracy"],
                        row["accuracy_cost"],
                        label,
                        "blocked" if r["blocked"] else r["fidelity"],
                        r["fidelity_drop"],
                    ]
                )
        body.append(
            table_html(
                ["policy", "accuracy", "accuracy cost", "attack", "fidelity", "fidelity drop"], rows
            )
        )
    body.append("<h2>Findings</h2>")
    body.append(findings_html(doc.get("findings", [])))
    params = ", ".join(f"{k}={v}" for k, v in a.get("params", {}).items())
    body.append(
        f'<p class="muted">attack {esc(a["attack"])} ({esc(params)}); '
        f"{a['seconds']:.1f}s · bastion {esc(doc.get('bastion_version', ''))}</p>"
    )
    return render_html_page("Model extraction", "".join(body), subtitle=str(doc.get("model", "")))


def write_extraction_report(doc: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Add findings and the version to ``doc``; write ``report.json`` and ``report.html``."""
    full = {"bastion_version": __version__, "kind": "extraction", **doc}
    full["findings"] = [f.to_dict() for f in extraction_findings(full)]
    out = Path(out_dir)
    json_path = atomic_write_json(out / "report.json", full)
    html_path = atomic_write_text(out / "report.html", extraction_html(full))
    return json_path, html_path
