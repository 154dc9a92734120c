"""The report of ``bastion harden fix`` (schema ``bastion.harden-fix/1``) as HTML and Markdown.

It reads the dictionary of :meth:`bastion.defences.fix.FixResult.to_dict`: what was hardened
and how, the findings not addressed and why, what regressed (with the numbers), the findings
fixed, new and unchanged, the metric changes with their intervals and the checks' statuses
before and after. HTML goes through the autoescaped Jinja2 templates; Markdown escapes every
text that comes from a document.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bastion.report.formats import CHANGE_WORDS, estimate_text
from bastion.report.markdown import md_escape
from bastion.report.templating import render_template

__all__ = ["render_fix_html", "render_fix_markdown"]


def _pct(value: Any) -> str:
    return "—" if not isinstance(value, int | float) else f"{value:.1%}"


def _ci(ci: Any) -> tuple[float, float] | None:
    return (float(ci[0]), float(ci[1])) if ci else None


def _metric_rows(doc: Mapping[str, Any]) -> list[list[Any]]:
    rows = []
    for m in doc["diff"]["metrics"]:
        if m["change"] == "same":
            continue
        rows.append([m["check"], m["metric"], estimate_text(m["before"], _ci(m["ci_before"])),
                     estimate_text(m["after"], _ci(m["ci_after"])),
                     None if m["delta"] is None else f"{m['delta']:+.4g}",
                     CHANGE_WORDS.get(m["change"], m["change"])])
    return rows


def _finding_rows(doc: Mapping[str, Any]) -> list[list[Any]]:
    findings = doc["diff"]["findings"]
    return [[status, f["severity"], f["title"], f["check"], f["fingerprint"]]
            for status in ("fixed", "new", "unchanged") for f in findings[status]]


def _headline(doc: Mapping[str, Any]) -> str:
    s = doc["diff"]["summary"]
    verdict = "regressed" if doc["regressed"] else "no regression"
    return (f"{s['fixed']} fixed, {s['new']} new, {s['unchanged']} unchanged finding(s); "
            f"{len(doc['regressions'])} regression(s) ({verdict})")


def render_fix_html(doc: Mapping[str, Any]) -> str:
    """The self-contained page of a fix report (already JSON-clean)."""
    s = doc["diff"]["summary"]
    acc = doc["accuracy"]
    tm = doc["threat_model"]
    eps = tm.get("eps")
    threat = (f"{tm.get('access')}, {tm.get('norm')} eps "
              f"{format(eps, '.4g') if isinstance(eps, int | float) else eps}")
    cards = [(str(s["fixed"]), "findings fixed"), (str(s["new"]), "new findings"),
             (str(s["unchanged"]), "unchanged"),
             (str(len(doc["regressions"])), "regressions"),
             (f"{_pct(acc.get('before'))} → {_pct(acc.get('after'))}", "test accuracy")]
    training = dict(doc.get("training") or {})
    report = training.pop("report", None) or {}
    training_rows = [[k, v] for k, v in training.items()]
    training_rows += [[k, v] for k, v in report.items() if k not in ("history", "losses")]
    served = acc.get("served_through")
    return render_template(
        "fix.html.j2",
        title="Fix and verify: hardening against the audit's findings",
        subtitle=(f"audit {doc['audit']['source']} · {_headline(doc)} · seed {doc['seed']} · "
                  f"bastion {doc.get('bastion_version', '')}"),
        cards=cards,
        regressions=doc["regressions"],
        remedy_rows=[[r["target"], r["method"], ", ".join(r["findings"]), r["settings"]]
                     for r in doc["remedies"]],
        policy=doc.get("output_policy"),
        left_rows=[[n["check"], n["id"], n["severity"], n["fingerprint"], n["reason"]]
                   for n in doc["not_addressed"]],
        seed=doc["seed"], threat=threat,
        finding_rows=_finding_rows(doc),
        metric_rows=_metric_rows(doc),
        check_rows=[[c["check"], c["before"], c["after"]] for c in doc["diff"]["checks"]],
        accuracy_rows=[["audited model", _pct(acc.get("before"))],
                       ["hardened model" + (f" served through {served}" if served else ""),
                        _pct(acc.get("after"))]],
        training_rows=training_rows,
        warnings=doc.get("warnings", []),
        file_rows=[[k, v] for k, v in doc.get("files", {}).items()],
    )


def render_fix_markdown(doc: Mapping[str, Any]) -> str:
    """The fix report as Markdown (a pull-request comment)."""
    acc = doc["accuracy"]
    lines = ["### Bastion fix and verify", "", md_escape(_headline(doc)) + ".", ""]
    for r in doc["regressions"]:
        lines.append(f"- **Regressed ({md_escape(r['kind'])})**: {md_escape(r['detail'])}")
    if doc["regressions"]:
        lines.append("")
    lines += ["#### What was done", "", "| hardening | method | findings | settings |",
              "|---|---|---|---|"]
    for r in doc["remedies"]:
        settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items())
        lines.append(f"| {md_escape(r['target'])} | {md_escape(r['method'])} | "
                     f"{md_escape(', '.join(r['findings']))} | {md_escape(settings)} |")
    if not doc["remedies"]:
        lines.append("| nothing | | | |")
    lines.append("")
    if doc["not_addressed"]:
        lines += ["#### Not addressed", "", "| check | finding | severity | reason |",
                  "|---|---|---|---|"]
        for n in doc["not_addressed"]:
            lines.append(f"| {md_escape(n['check'])} | {md_escape(n['id'])} | "
                         f"{md_escape(n['severity'])} | {md_escape(n['reason'], 600)} |")
        lines.append("")
    rows = _finding_rows(doc)
    if rows:
        lines += ["#### Findings", "", "| change | severity | finding | check |",
                  "|---|---|---|---|"]
        for status, sev, title, check, fp in rows:
            lines.append(f"| {status} | {md_escape(sev)} | {md_escape(title)} (`{fp}`) | "
                         f"{md_escape(check)} |")
        lines.append("")
    metrics = _metric_rows(doc)
    if metrics:
        lines += ["#### Metrics", "", "| check | metric | before | after | delta | change |",
                  "|---|---|---|---|---|---|"]
        for row in metrics:
            lines.append("| " + " | ".join(md_escape("—" if v is None else v) for v in row)
                         + " |")
        lines.append("")
    lines += [f"Test accuracy: {_pct(acc.get('before'))} → {_pct(acc.get('after'))} "
              f"({acc.get('n')} samples).", ""]
    cert = (doc.get("training") or {}).get("certified")
    if cert:
        lines += [f"Smoothed classifier (σ {cert['sigma']:g}): certified accuracy "
                  f"{_pct(cert['certified_accuracy'])} at L2 radius {cert['radius']:g}, "
                  f"{_pct(cert['smoothed_accuracy'])} at radius 0 ({cert['samples']} samples; "
                  "the rerun's evasion check attacks the base model).", ""]
    for w in doc.get("warnings", []):
        lines.append(f"> warning: {md_escape(w)}")
    return "\n".join(lines).rstrip() + "\n"
