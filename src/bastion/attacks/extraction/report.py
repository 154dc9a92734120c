"""Findings of a model-extraction run (the report files are written by
:mod:`bastion.report.extraction`: attacks return results, they never render)."""

from __future__ import annotations

from typing import Any

from bastion.audit.findings import Finding, Severity
from bastion.threat import ATLAS, OWASP

__all__ = ["extraction_findings"]


def extraction_findings(doc: dict[str, Any]) -> list[Finding]:
    """Findings for an extraction report document (``bastion evaluate extraction``)."""
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
