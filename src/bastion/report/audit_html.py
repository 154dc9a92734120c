"""``report.html`` of an audit document: scorecard, findings by severity, one section per check."""

from __future__ import annotations

from typing import Any

from bastion.report.plots import image_cells
from bastion.report.templating import SEVERITY_ORDER, fmt_ci, fmt_number, render_template

__all__ = ["PRACTICE_TITLES", "ordered_findings", "render_html"]

PRACTICE_TITLES = {
    "secure_data_access": "Secure data access",
    "model_validation": "Model validation",
    "data_validation": "Data validation",
    "model_monitoring": "Model monitoring",
    "regular_updates": "Regular updates",
    "privacy_protection": "Privacy protection",
    "collaboration": "Collaboration",
}


def _severity_rank(severity: str) -> int:
    return SEVERITY_ORDER.index(severity) if severity in SEVERITY_ORDER else len(SEVERITY_ORDER)


def ordered_findings(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every finding of every check, most severe first, suppressed ones last (stable order)."""
    found = [f for c in doc.get("checks", []) for f in c.get("findings", [])]
    return sorted(found, key=lambda f: (bool(f.get("suppressed")), _severity_rank(f["severity"])))


def _metric_rows(metrics: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for key, m in metrics.items():
        unit = m.get("unit")
        value = fmt_number(m.get("value"))
        rows.append({
            "label": m.get("label") or key.replace("_", " "),
            "value": f"{value} {unit}" if unit and value != "—" else value,
            "ci": fmt_ci(m.get("ci")),
            "method": m.get("ci_method") or "—",
            "n": fmt_number(m.get("n")),
        })
    return rows


def _plot_view(plot: dict[str, Any]) -> dict[str, Any]:
    if plot.get("kind") == "images":
        return {"kind": "images", "title": plot.get("title", ""), "rows": image_cells(plot)}
    return plot


def _scorecard_rows(card: dict[str, Any]) -> list[dict[str, Any]]:
    cells = {(c["threat"], c["practice"]): c for c in card.get("cells", [])}
    rows = []
    for t in card.get("threats", []):
        rows.append({
            "title": t.get("title") or t["threat"],
            "status": t["status"],
            "checks": t.get("checks", []),
            "cells": [cells.get((t["threat"], p), {"status": "n/a", "checks": []})
                      for p in card.get("practices", [])],
        })
    return rows


def _cards(doc: dict[str, Any], findings: list[dict[str, Any]]) -> list[tuple[str, str]]:
    checks = doc.get("checks", [])
    by_status = {s: sum(c["status"] == s for c in checks) for s in ("passed", "failed",
                                                                    "not_run", "error")}
    open_findings = [f for f in findings if not f.get("suppressed")]
    out = [
        (doc["verdict"]["max_severity"].upper(), "highest severity"),
        (str(len(open_findings)), "findings"),
        (f"{by_status['passed']} / {len(checks)}", "checks passed"),
    ]
    if by_status["failed"]:
        out.append((str(by_status["failed"]), "checks failed"))
    if by_status["not_run"] or by_status["error"]:
        out.append((str(by_status["not_run"] + by_status["error"]), "not run or error"))
    return out


def render_html(doc: dict[str, Any]) -> str:
    """The self-contained HTML page of an audit document (already validated)."""
    findings = ordered_findings(doc)
    threat_titles = {"data_quality": "Data quality"}
    threat_titles.update({t["threat"]: t.get("title") or t["threat"]
                          for t in doc["scorecard"].get("threats", [])})
    checks = []
    for c in doc.get("checks", []):
        checks.append({
            **c,
            "threat_title": threat_titles.get(c["threat"], c["threat"]),
            "metrics_rows": _metric_rows(c.get("metrics", {})),
            "plot_views": [_plot_view(p) for p in c.get("plots", [])],
        })
    model = doc["model"]
    model_pairs = [("source", model["source"]), ("kind", model["kind"]),
                   ("digest", model.get("digest") or "—")]
    for key in ("adapter", "capabilities", "input_shape", "num_classes", "bounds", "domain",
                "registry"):
        if model.get(key) not in (None, [], {}):
            model_pairs.append((key.replace("_", " "), model[key]))
    model_pairs += [(f"file {f['path']}", f["sha256"]) for f in model.get("files", [])[:20]]
    data_rows = [[role, d["source"], d["n"], d.get("sha256"),
                  ", ".join(d.get("features") or [])[:300] or None]
                 for role, d in (doc.get("data") or {}).items()]
    env = doc["environment"]
    environment_pairs = [("python", env["python"]), ("platform", env["platform"]),
                         ("device", env["device"])]
    if env.get("executor"):
        environment_pairs.append(("executor", env["executor"]))
    environment_pairs += sorted(env.get("packages", {}).items())
    environment_pairs += [("bastion", doc["bastion_version"]),
                          ("check catalogue", doc["catalogue_version"])]
    practices = [{"id": p, "title": PRACTICE_TITLES.get(p, p.replace("_", " ").capitalize())}
                 for p in doc["scorecard"].get("practices", [])]
    return render_template(
        "audit.html.j2",
        title=f"Bastion audit: {model['source']}",
        verdict=doc["verdict"],
        model=model,
        command=doc.get("command", "audit"),
        seed=doc["seed"],
        created=doc["created"],
        cards=_cards(doc, findings),
        practices=practices,
        scorecard_rows=_scorecard_rows(doc["scorecard"]),
        findings=findings,
        not_run=[c for c in checks if c["status"] in ("not_run", "error")],
        checks=checks,
        model_pairs=model_pairs,
        data_rows=data_rows,
        threat_pairs=[(k.replace("_", " "), v) for k, v in doc["threat_model"].items()],
        plan_rows=[[p["check"], p["will_run"], p.get("reason"), p.get("enable")]
                   for p in doc.get("plan", [])],
        environment_pairs=environment_pairs,
    )
