"""Renderers of the one audit document (``bastion.audit/1``): JSON, HTML and Markdown.

``render(doc, "html")`` returns a self-contained page (scorecard, findings by severity with
their fix, one section per check with its charts); ``write_report(doc, out_dir)`` writes
``report.json``, ``report.html`` and ``report.md`` atomically. :data:`RENDERERS` maps each
format to its function; other formats (SARIF, JUnit, CycloneDX) add themselves to it.
Charts are drawn by matplotlib and pages by autoescaped Jinja2 templates.
"""

from bastion.report.document import (
    FILE_NAMES,
    RENDERERS,
    json_safe,
    render,
    render_json,
    validate_document,
    write_report,
)

__all__ = [
    "FILE_NAMES",
    "RENDERERS",
    "json_safe",
    "render",
    "render_json",
    "validate_document",
    "write_report",
]
