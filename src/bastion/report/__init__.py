"""Report renderers: JSON, self-contained HTML, Markdown and SARIF over the same findings."""

from bastion.report.html import line_chart_svg, render_html_page
from bastion.report.writers import findings_markdown, findings_sarif, write_evasion_report

__all__ = [
    "findings_markdown",
    "findings_sarif",
    "line_chart_svg",
    "render_html_page",
    "write_evasion_report",
]
