"""Formats other tools read, rendered from the one audit document.

- :func:`audit_sarif`: SARIF 2.1.0 for code-scanning dashboards (GitHub, GitLab, Azure DevOps):
  one rule per finding id with help text and the ATLAS / OWASP ids as tags, one result per
  finding at the model file, the finding's fingerprint as a partial fingerprint, and a SARIF
  ``suppressions`` entry for an accepted risk.
- :func:`audit_junit`: JUnit XML, one test case per check (passed; failed with its findings;
  skipped with the ``not_run`` reason; error with its cause), so any CI shows the audit as tests.
- :func:`audit_mlbom`: a CycloneDX 1.6 ML-BOM: the model as a ``machine-learning-model``
  component with its hashes and a ``modelCard`` (parameters, datasets by digest, the audit's
  metrics with their intervals, the findings and their remedies), the data sets as ``data``
  components, and each finding as a vulnerability affecting the model.

Each takes the document as a ``dict`` and returns text; none reads anything but the document.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any
from xml.etree import ElementTree as ET

from bastion.audit.baseline import iter_findings
from bastion.audit.findings import Severity

__all__ = [
    "CHANGE_WORDS",
    "SECURITY_SEVERITY",
    "audit_junit",
    "audit_mlbom",
    "audit_sarif",
    "diff_markdown",
    "estimate_text",
]

_LEVEL = {"critical": "error", "high": "error", "medium": "warning", "low": "note", "info": "note"}
#: GitHub code scanning reads ``security-severity`` (0.0-10.0) to rank security results.
SECURITY_SEVERITY = {"critical": "9.5", "high": "8.0", "medium": "5.5", "low": "3.0", "info": "0.5"}


def _model_uris(doc: Mapping[str, Any]) -> list[str]:
    model = doc.get("model") or {}
    files = [str(f["path"]) for f in model.get("files", []) if f.get("path")]
    return files or [str(model.get("source") or "model")]


def _ordered_findings(doc: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    def rank(item: tuple[str, dict[str, Any]]) -> tuple[int, str]:
        try:
            sev = Severity(str(item[1].get("severity"))).rank
        except ValueError:
            sev = 0
        return (-sev, str(item[1].get("id")))

    return sorted(iter_findings(doc), key=rank)


# ------------------------------------------------------------------------------------ SARIF


def audit_sarif(doc: Mapping[str, Any]) -> str:
    """The audit as a SARIF 2.1.0 log (JSON text)."""
    uris = _model_uris(doc)
    rules: dict[str, dict[str, Any]] = {}
    results: list[dict[str, Any]] = []
    for check, f in _ordered_findings(doc):
        rid = str(f["id"])
        sev = str(f.get("severity", "medium"))
        tags = ["security", *f.get("atlas", []), *f.get("owasp", []), str(f.get("threat", ""))]
        if rid not in rules:
            remedy = str(f.get("remediation") or "")
            rules[rid] = {
                "id": rid,
                "name": rid.replace(".", "/"),
                "shortDescription": {"text": str(f.get("title", rid))},
                "fullDescription": {"text": f"{f.get('title', rid)} (check: {check})"},
                "help": {
                    "text": remedy or "No remedy recorded.",
                    "markdown": f"**Remedy.** {remedy}\n\nATLAS: "
                    f"{', '.join(f.get('atlas', [])) or '-'}; OWASP ML Top 10: "
                    f"{', '.join(f.get('owasp', [])) or '-'}",
                },
                "defaultConfiguration": {"level": _LEVEL.get(sev, "warning")},
                "properties": {
                    "tags": [t for t in tags if t],
                    "security-severity": SECURITY_SEVERITY.get(sev, "5.5"),
                    "precision": "high",
                },
            }
        message = str(f.get("title", rid))
        if f.get("remediation"):
            message += f" Remedy: {f['remediation']}"
        result: dict[str, Any] = {
            "ruleId": rid,
            "ruleIndex": list(rules).index(rid),
            "level": _LEVEL.get(sev, "warning"),
            "message": {"text": message},
            "locations": [
                {
                    "physicalLocation": {"artifactLocation": {"uri": uris[0]}},
                    **(
                        {"logicalLocations": [{"name": str(f["location"]), "kind": "member"}]}
                        if f.get("location") else {}
                    ),
                }
            ],
            "partialFingerprints": {"bastionFinding/v1": str(f.get("fingerprint", ""))},
            "properties": {
                "severity": sev,
                "check": check,
                "evidence": f.get("evidence", {}),
            },
        }
        if f.get("suppressed"):
            s = f["suppressed"]
            result["suppressions"] = [{
                "kind": "external",
                "status": "accepted",
                "justification": f"{s.get('reason', '')} (owner {s.get('owner', '?')},"
                f" until {s.get('expires', '?')})",
            }]
        results.append(result)
    log = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "bastion",
                "version": str(doc.get("bastion_version", "")),
                "informationUri": "https://github.com/bastion-ml/bastion",
                "rules": list(rules.values()),
            }},
            "automationDetails": {"id": f"bastion/audit/{doc.get('created', '')}"},
            "artifacts": [{"location": {"uri": u}} for u in uris],
            "invocations": [{
                "executionSuccessful": True,
                "endTimeUtc": str(doc.get("created", "")) or None,
            }],
            "results": results,
            "properties": {
                "schema": doc.get("schema"),
                "verdict": doc.get("verdict", {}),
                "modelDigest": (doc.get("model") or {}).get("digest"),
            },
        }],
    }
    inv = log["runs"][0]["invocations"][0]  # type: ignore[index]
    if inv["endTimeUtc"] is None:
        del inv["endTimeUtc"]
    return json.dumps(log, indent=2)


# ------------------------------------------------------------------------------------ JUnit


def _metric_lines(check: Mapping[str, Any]) -> str:
    lines = []
    for name, m in sorted((check.get("metrics") or {}).items()):
        value = m.get("value")
        ci = m.get("ci")
        text = f"{name} = {value:.4g}" if isinstance(value, int | float) else f"{name} = n/a"
        if ci:
            text += f" (95% CI {ci[0]:.4g}-{ci[1]:.4g}, {m.get('ci_method') or 'interval'})"
        lines.append(text)
    return "\n".join(lines)


def audit_junit(doc: Mapping[str, Any]) -> str:
    """The audit as JUnit XML: one ``testcase`` per check."""
    checks = list(doc.get("checks", []))
    counts = {"failed": 0, "error": 0, "not_run": 0}
    total_time = 0.0
    suite = ET.Element("testsuite")
    for c in checks:
        status = str(c.get("status"))
        seconds = float(c.get("seconds") or 0.0)
        total_time += seconds
        case = ET.SubElement(
            suite, "testcase",
            name=str(c.get("name")), classname=f"bastion.audit.{c.get('threat', 'check')}",
            time=f"{seconds:.3f}",
        )
        findings = [f for f in c.get("findings", []) if not f.get("suppressed")]
        if status == "failed":
            counts["failed"] += 1
            worst = max(
                (Severity(str(f["severity"])) for f in findings if f.get("severity")
                 in {s.value for s in Severity}),
                key=lambda s: s.rank, default=None,
            )
            failure = ET.SubElement(
                case, "failure",
                message=f"{len(findings)} finding(s)"
                + (f", worst {worst.value}" if worst else "")
                + (f": {c.get('summary')}" if c.get("summary") else ""),
                type=worst.value if worst else "failed",
            )
            failure.text = "\n\n".join(
                f"[{f.get('severity')}] {f.get('id')} ({f.get('fingerprint')}): {f.get('title')}"
                f"\nRemedy: {f.get('remediation') or '-'}"
                for f in findings
            ) or str(c.get("summary") or "failed")
        elif status == "not_run":
            counts["not_run"] += 1
            reason = str(c.get("reason") or "not run")
            if c.get("enable"):
                reason += f" (to enable: {c['enable']})"
            ET.SubElement(case, "skipped", message=reason)
        elif status == "error":
            counts["error"] += 1
            err = ET.SubElement(case, "error", message=str(c.get("reason") or "error"),
                                type="error")
            err.text = str(c.get("reason") or "")
        out = _metric_lines(c)
        if c.get("summary"):
            out = f"{c['summary']}\n{out}"
        if out:
            ET.SubElement(case, "system-out").text = out
    suite.set("name", f"bastion audit of {(doc.get('model') or {}).get('source', 'model')}")
    suite.set("tests", str(len(checks)))
    suite.set("failures", str(counts["failed"]))
    suite.set("errors", str(counts["error"]))
    suite.set("skipped", str(counts["not_run"]))
    suite.set("time", f"{total_time:.3f}")
    if doc.get("created"):
        suite.set("timestamp", str(doc["created"]).removesuffix("Z"))
    root = ET.Element(
        "testsuites", name="bastion audit", tests=str(len(checks)),
        failures=str(counts["failed"]), errors=str(counts["error"]),
        skipped=str(counts["not_run"]), time=f"{total_time:.3f}",
    )
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode")


# ----------------------------------------------------------------------------------- ML-BOM


def _cdx_hashes(digest: str | None) -> list[dict[str, str]]:
    if not digest:
        return []
    hexd = digest.split(":", 1)[-1]
    return [{"alg": "SHA-256", "content": hexd}] if len(hexd) == 64 else []


def audit_mlbom(doc: Mapping[str, Any]) -> str:
    """The audit as a CycloneDX 1.6 ML-BOM (JSON text)."""
    model = doc.get("model") or {}
    data = doc.get("data") or {}
    threat = doc.get("threat_model") or {}
    created = str(doc.get("created") or "")
    # a serial number fixed by the document, so rendering twice gives the same BOM
    serial = uuid.uuid5(uuid.NAMESPACE_URL, f"bastion-audit:{model.get('digest')}:{created}")

    data_components = []
    dataset_refs = []
    for role, ds in sorted(data.items()):
        ref = f"data-{role}"
        dataset_refs.append({"ref": ref})
        comp: dict[str, Any] = {
            "type": "data",
            "bom-ref": ref,
            "name": f"{role}: {ds.get('source', role)}",
            "data": [{
                "type": "dataset",
                "name": str(ds.get("source", role)),
                "contents": {"properties": [
                    {"name": "bastion:role", "value": role},
                    {"name": "bastion:samples", "value": str(ds.get("n", ""))},
                ]},
                **({"sensitiveData": ["membership of individual samples"]}
                   if role in (threat.get("sensitive") or []) else {}),
            }],
        }
        hashes = _cdx_hashes(ds.get("sha256"))
        if hashes:
            comp["hashes"] = hashes
        data_components.append(comp)

    metrics = []
    for c in doc.get("checks", []):
        for name, m in sorted((c.get("metrics") or {}).items()):
            if m.get("value") is None:
                continue
            pm: dict[str, Any] = {
                "type": name,
                "value": f"{m['value']:.6g}",
                "slice": f"check {c.get('name')}"
                + (f", {threat.get('norm')} eps {threat.get('eps')}"
                   if c.get("threat") == "evasion" else ""),
            }
            if m.get("ci"):
                pm["confidenceInterval"] = {
                    "lowerBound": f"{m['ci'][0]:.6g}", "upperBound": f"{m['ci'][1]:.6g}"
                }
            metrics.append(pm)

    findings = _ordered_findings(doc)
    limitations = [
        f"[{f.get('severity')}] {f.get('title')} ({f.get('id')}, fingerprint "
        f"{f.get('fingerprint')}). Remedy: {f.get('remediation') or '-'}"
        + (" (accepted risk: " + str(f['suppressed'].get('reason')) + ")"
           if f.get("suppressed") else "")
        for _, f in findings
    ]
    risks = [
        {"name": str(f.get("title")), "mitigationStrategy": str(f.get("remediation") or "-")}
        for _, f in findings
    ]
    shape = model.get("input_shape")
    model_card: dict[str, Any] = {
        "modelParameters": {
            "approach": {"type": "supervised"},
            "task": "classification",
            "modelArchitecture": str(model.get("adapter") or "unknown"),
            "datasets": dataset_refs,
            "inputs": [{"format": f"{model.get('domain', 'other')} tensor {tuple(shape)}"
                        if shape else str(model.get("domain", "other"))}],
            "outputs": [{"format": f"scores over {model.get('num_classes')} classes"
                         if model.get("num_classes") else "class scores"}],
        },
        "quantitativeAnalysis": {"performanceMetrics": metrics},
        "considerations": {
            "technicalLimitations": limitations,
            "ethicalConsiderations": risks,
        },
        "properties": [
            {"name": "bastion:audit-schema", "value": str(doc.get("schema"))},
            {"name": "bastion:verdict", "value": str((doc.get("verdict") or {}).get("status"))},
            {"name": "bastion:threat-model", "value": json.dumps(threat, sort_keys=True)},
        ],
    }
    model_component: dict[str, Any] = {
        "type": "machine-learning-model",
        "bom-ref": "model",
        "name": str(model.get("source") or "model"),
        "modelCard": model_card,
    }
    hashes = _cdx_hashes(model.get("digest"))
    if hashes:
        model_component["hashes"] = hashes
    if model.get("files"):
        model_component["properties"] = [
            {"name": f"bastion:file:{f['path']}", "value": f"sha256:{f['sha256']}"}
            for f in model["files"]
        ]

    vulnerabilities = [
        {
            "bom-ref": f"finding-{f.get('fingerprint')}",
            "id": str(f.get("id")),
            "source": {"name": "bastion"},
            "ratings": [{
                "source": {"name": "bastion"},
                "severity": str(f.get("severity")) if f.get("severity") in
                {s.value for s in Severity} else "unknown",
                "method": "other",
            }],
            "detail": str(f.get("title")),
            "recommendation": str(f.get("remediation") or ""),
            "affects": [{"ref": "model"}],
            "properties": [
                {"name": "bastion:fingerprint", "value": str(f.get("fingerprint"))},
                {"name": "bastion:check", "value": check},
                *({"name": "mitre-atlas", "value": a} for a in f.get("atlas", [])),
                *({"name": "owasp-ml", "value": o} for o in f.get("owasp", [])),
            ],
            **({"analysis": {"state": "exploitable" if not f.get("suppressed")
                             else "in_triage",
                             **({"detail": str(f["suppressed"].get("reason"))}
                                if f.get("suppressed") else {})}}),
        }
        for check, f in findings
    ]
    bom: dict[str, Any] = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": serial.urn,
        "version": 1,
        "metadata": {
            **({"timestamp": created} if created else {}),
            "tools": {"components": [{
                "type": "application", "name": "bastion",
                "version": str(doc.get("bastion_version", "")),
            }]},
            "component": model_component,
        },
        "components": data_components,
        "vulnerabilities": vulnerabilities,
    }
    return json.dumps(bom, indent=2)


# ------------------------------------------------------------------------------------ diffs


def estimate_text(value: float | None, ci: tuple[float, float] | None) -> str:
    """``0.42 [0.32, 0.52]``: a value with its interval, as the diff shows it."""
    text = "n/a" if value is None else f"{value:.4g}"
    return text if ci is None else f"{text} [{ci[0]:.3g}, {ci[1]:.3g}]"


#: what each kind of metric change means, in words
CHANGE_WORDS = {
    "regression": "regression (outside both intervals)",
    "improvement": "improvement (outside both intervals)",
    "changed": "changed (outside both intervals)",
    "within-intervals": "within both intervals",
    "no-interval": "changed (no interval to judge)",
    "same": "unchanged",
}


def diff_markdown(diff: Any, *, limit: int = 30) -> str:
    """A :class:`~bastion.audit.baseline.AuditDiff` as Markdown for a pull-request comment."""
    s = diff.to_dict()["summary"]
    lines = [
        "### Bastion audit: what changed",
        "",
        f"**{s['new']} new**, {s['fixed']} fixed, {s['unchanged']} unchanged finding(s);"
        f" {s['regressions']} metric regression(s).",
        "",
    ]
    if diff.model_before != diff.model_after:
        lines += [f"Model: `{diff.model_before}` → `{diff.model_after}`", ""]
    for title, items in (("New", diff.new), ("Fixed", diff.fixed)):
        if items:
            lines += [f"#### {title} findings", "", "| severity | finding | check |",
                      "|---|---|---|"]
            for f in items[:limit]:
                lines.append(f"| {f.severity} | {_md(f.title)} (`{f.id}`, `{f.fingerprint}`) |"
                             f" {f.check} |")
            if len(items) > limit:
                lines.append(f"| | … and {len(items) - limit} more | |")
            lines.append("")
    changed = [m for m in diff.metrics if m.change != "same"]
    if changed:
        lines += ["#### Metrics", "", "| check | metric | before | after | change |",
                  "|---|---|---|---|---|"]
        for m in changed[:limit]:
            lines.append(
                f"| {m.check} | {m.metric} | {estimate_text(m.before, m.ci_before)} |"
                f" {estimate_text(m.after, m.ci_after)} | {CHANGE_WORDS[m.change]} |"
            )
        lines.append("")
    return "\n".join(lines)


def _md(text: str) -> str:
    """Neutralise Markdown and HTML in untrusted text (titles may name files)."""
    out = text.replace("\\", "\\\\")
    for ch in "|`*_[]<>#":
        out = out.replace(ch, "\\" + ch)
    return out.replace("\n", " ")
