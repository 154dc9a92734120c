"""report.md: short, escaped, with the scorecard, top findings and one line per check."""

from __future__ import annotations

import copy
from typing import Any

from bastion.report import render
from bastion.report.markdown import MAX_CHARS, MAX_CHECKS, MAX_FINDINGS, md_escape


def test_markdown_has_scorecard_findings_and_checks(audit_doc: dict[str, Any]) -> None:
    md = render(audit_doc, "md")
    lines = md.splitlines()
    assert lines[0] == "## Bastion audit: ❌ failed"
    table = [line for line in lines if line.startswith("| ")]
    assert len(table) == 1 + len(audit_doc["scorecard"]["threats"])
    assert "| Model stealing | ✅ passed |" in md
    assert "1. **CRITICAL**" in md and "2. **HIGH**" in md
    assert "suppressed finding" in md
    assert "⚪ not run **Attribute inference**: needs a sensitive feature (to enable: pass " in md
    assert len(md) < 6000


def test_untrusted_text_cannot_add_markup(audit_doc: dict[str, Any]) -> None:
    md = render(audit_doc, "md")
    assert "<script" not in md and "<img" not in md
    assert "](" not in md and "![" not in md
    assert md_escape("![x](https://t/p.png) <b>") == r"\!\[x\](https://t/p.png) &lt;b>"
    assert md_escape("a\nb|c", 10) == r"a b\|c"
    assert md_escape("y" * 500, 50) == "y" * 49 + "…"


def test_long_audits_are_capped(audit_doc: dict[str, Any]) -> None:
    doc = copy.deepcopy(audit_doc)
    finding = doc["checks"][1]["findings"][0]
    doc["checks"][1]["findings"] = [dict(finding, title=f"finding {i} " + "z" * 400)
                                    for i in range(40)]
    doc["checks"] += [dict(doc["checks"][7], name=f"c{i}", title="t" * 300,
                           reason="r" * 3000) for i in range(300)]
    md = render(doc, "md")
    assert len(md) <= MAX_CHARS
    assert f"{MAX_FINDINGS + 1}. **" not in md
    assert f"…and {43 - MAX_FINDINGS} more in report.html." in md
    assert f"- …and {len(doc['checks']) - MAX_CHECKS} more checks in report.html." in md
    assert md.count("\n- ") == MAX_CHECKS + 1
    doc["checks"][0]["findings"][0]["remediation"] = "fix " * 10_000
    for c in doc["checks"][:MAX_CHECKS]:
        c.update(status="not_run", reason="why " * 1000, enable="how " * 1000)
    assert len(render(doc, "md")) <= MAX_CHARS
