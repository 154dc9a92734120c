"""``report.md``: an audit short enough for a pull-request comment.

The scorecard as a table, the most severe findings with their fix, and one line per check.
Lengths are capped (:data:`MAX_FINDINGS`, :data:`MAX_TEXT`, and the whole text at
:data:`MAX_CHARS`, well below GitHub's 65,536-character comment limit). Text from the document
is escaped, so a model or feature name cannot add links, images or HTML to the comment.
"""

from __future__ import annotations

import re
from typing import Any

from bastion.report.audit_html import PRACTICE_TITLES, ordered_findings

__all__ = ["MAX_CHARS", "MAX_CHECKS", "MAX_FINDINGS", "MAX_TEXT", "md_escape", "render_markdown"]

MAX_FINDINGS = 10
MAX_TEXT = 240
MAX_CHARS = 20_000
MAX_CHECKS = 40

_ICON = {
    "passed": "✅ passed",
    "failed": "❌ failed",
    "not_run": "⚪ not run",
    "error": "⚠️ error",
    "partial": "🟠 partial",
    "incomplete": "🟠 incomplete",
    "n/a": "–",
}
_SPECIAL = re.compile(r"([\\`*_\[\]!|~])")


def md_escape(text: Any, limit: int = MAX_TEXT) -> str:
    """Untrusted text as inert Markdown: one line, capped, markup characters escaped."""
    s = " ".join(str(text).split())
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    s = s.replace("<", "&lt;")
    return _SPECIAL.sub(r"\\\1", s)


def _code(text: Any, limit: int = 80) -> str:
    """Text in a code span (backticks cannot occur inside it)."""
    s = " ".join(str(text).split()).replace("`", "'")
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return f"`{s}`"


def render_markdown(doc: dict[str, Any]) -> str:
    """The Markdown summary of an audit document (already validated)."""
    verdict = doc["verdict"]
    model = doc["model"]
    lines = [
        f"## Bastion audit: {_ICON.get(verdict['status'], verdict['status'])}",
        "",
        f"Model {_code(model['source'])}"
        + (f" · {_code(model['digest'][:19] + '…')}" if model.get("digest") else "")
        + f" · highest severity **{verdict['max_severity']}**"
        + f" · seed {doc['seed']} · bastion {md_escape(doc['bastion_version'], 20)}",
        "",
    ]
    card = doc["scorecard"]
    practices = card.get("practices", [])
    cells = {(c["threat"], c["practice"]): c["status"] for c in card.get("cells", [])}
    header = ["Threat", "Overall", *(PRACTICE_TITLES.get(p, md_escape(p)) for p in practices)]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for t in card.get("threats", []):
        row = [md_escape(t.get("title") or t["threat"], 60), _ICON.get(t["status"], t["status"])]
        row += [_ICON.get(cells.get((t["threat"], p), "n/a"), "?") for p in practices]
        lines.append("| " + " | ".join(row) + " |")
    findings = [f for f in ordered_findings(doc) if not f.get("suppressed")]
    lines += ["", f"### Findings ({len(findings)})", ""]
    if not findings:
        lines.append("No findings: every check that ran passed.")
    for i, f in enumerate(findings[:MAX_FINDINGS], 1):
        where = f" at {_code(f['location'])}" if f.get("location") else ""
        lines.append(f"{i}. **{f['severity'].upper()}** {md_escape(f['title'])} "
                     f"({_code(f['id'])}{where})")
        if f.get("remediation"):
            lines.append(f"   Fix: {md_escape(f['remediation'])}")
    if len(findings) > MAX_FINDINGS:
        lines.append(f"\n…and {len(findings) - MAX_FINDINGS} more in report.html.")
    suppressed = sum(bool(f.get("suppressed")) for c in doc["checks"] for f in c["findings"])
    if suppressed:
        lines.append(f"\n{suppressed} suppressed finding(s) not listed.")
    lines += ["", "### Checks", ""]
    checks = doc.get("checks", [])
    for c in checks[:MAX_CHECKS]:
        line = f"- {_ICON.get(c['status'], c['status'])} **{md_escape(c['title'], 60)}**"
        if c["status"] in ("not_run", "error"):
            line += f": {md_escape(c.get('reason') or 'no reason given')}"
            if c.get("enable"):
                line += f" (to enable: {md_escape(c['enable'], 120)})"
        elif c.get("summary"):
            line += f": {md_escape(c['summary'])}"
        lines.append(line)
    if len(checks) > MAX_CHECKS:
        lines.append(f"- …and {len(checks) - MAX_CHECKS} more checks in report.html.")
    lines += ["", "<sub>Full report with plots: report.html · data: report.json</sub>", ""]
    text = "\n".join(lines)
    if len(text) > MAX_CHARS:
        text = text[: MAX_CHARS - 60].rsplit("\n", 1)[0] + "\n\n…(cut; see report.html)\n"
    return text
