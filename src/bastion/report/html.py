"""Legacy string-built HTML helpers, kept only for the membership, inversion and poison pages
that have not yet moved to the audit document (``cli/inference.py``, ``cli/poison.py``).

New pages use the autoescaped Jinja2 templates of :mod:`bastion.report.templating` and the
matplotlib charts of :mod:`bastion.report.plots`; remove this module with its last caller.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

__all__ = ["esc", "findings_html", "line_chart_svg", "render_html_page", "table_html"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto}
body{max-width:980px;color:#1d2330;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}
h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #dde;padding-bottom:.3rem}
.muted{color:#667}.cards{display:flex;gap:1rem;flex-wrap:wrap}
.card{border:1px solid #dde;border-radius:8px;padding:.8rem 1rem;min-width:150px}
.card .v{font-size:1.6rem;font-weight:600}.card .k{color:#667;font-size:.85rem}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{border-bottom:1px solid #e5e7ee;padding:.35rem .5rem;text-align:left}
th{background:#f5f6fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.sev{display:inline-block;border-radius:4px;padding:0 .4rem;font-size:.8rem}
.sev{font-weight:600;color:#fff}
.sev-info{background:#6b7280}.sev-low{background:#2563eb}.sev-medium{background:#d97706}
.sev-high{background:#dc2626}.sev-critical{background:#7f1d1d}
.warn{background:#fff7e6;border-left:4px solid #d97706;padding:.5rem .8rem;margin:.4rem 0}
.finding{border:1px solid #e5e7ee;border-radius:8px;padding:.6rem .9rem;margin:.6rem 0}
code{background:#f5f6fa;padding:0 .25rem;border-radius:3px}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def render_html_page(title: str, body: str, subtitle: str = "") -> str:
    """A complete HTML document around ``body`` (already-escaped HTML)."""
    sub = f'<p class="muted">{esc(subtitle)}</p>' if subtitle else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>"
        f"<body><h1>{esc(title)}</h1>{sub}{body}</body></html>\n"
    )


def table_html(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A table; numbers are right-aligned and floats shown with 4 significant digits."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for v in row:
            if isinstance(v, bool) or v is None:
                cells.append(f"<td>{esc('—' if v is None else v)}</td>")
            elif isinstance(v, float):
                cells.append(f'<td class="num">{v:.4g}</td>')
            elif isinstance(v, int):
                cells.append(f'<td class="num">{v}</td>')
            else:
                cells.append(f"<td>{esc(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def findings_html(findings: Sequence[dict[str, Any]]) -> str:
    if not findings:
        return '<p class="muted">No findings.</p>'
    parts = []
    for f in findings:
        ids = ", ".join([*f.get("atlas", []), *f.get("owasp", [])])
        parts.append(
            f'<div class="finding"><span class="sev sev-{esc(f["severity"])}">'
            f"{esc(f['severity'].upper())}</span> <strong>{esc(f['title'])}</strong>"
            f'<div class="muted">{esc(f["id"])} · {esc(f["threat"])} · {esc(ids)}</div>'
            f"<p>{esc(f.get('remediation', ''))}</p></div>"
        )
    return "".join(parts)


def line_chart_svg(
    series: dict[str, Sequence[tuple[float, float]]],
    *,
    x_label: str,
    y_label: str,
    y_range: tuple[float, float] | None = (0.0, 1.0),
    width: int = 640,
    height: int = 320,
) -> str:
    """An inline SVG line chart of one or more ``{name: [(x, y), ...]}`` series."""
    palette = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2"]
    left, right, top, bottom = 56, 16, 16, 44
    pts = [p for s in series.values() for p in s]
    if not pts:
        return '<p class="muted">No data to plot.</p>'
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    if y_range is None:
        y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    else:
        y0, y1 = y_range
    x1 = x1 if x1 > x0 else x0 + 1.0
    y1 = y1 if y1 > y0 else y0 + 1.0
    pw, ph = width - left - right, height - top - bottom

    def sx(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * pw

    def sy(v: float) -> float:
        return top + (1 - (v - y0) / (y1 - y0)) * ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(y_label)} vs {esc(x_label)}">',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafbfd" stroke="#dde"/>',
    ]
    for i in range(6):
        yv = y0 + (y1 - y0) * i / 5
        xv = x0 + (x1 - x0) * i / 5
        out.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{sy(yv):.1f}" y2="{sy(yv):.1f}" '
            'stroke="#e5e7ee"/>'
        )
        out.append(
            f'<text x="{left - 6}" y="{sy(yv) + 4:.1f}" font-size="11" text-anchor="end">'
            f"{yv:.2g}</text>"
        )
        out.append(
            f'<text x="{sx(xv):.1f}" y="{top + ph + 16}" font-size="11" text-anchor="middle">'
            f"{xv:.3g}</text>"
        )
    out.append(
        f'<text x="{left + pw / 2}" y="{height - 6}" font-size="12" text-anchor="middle">'
        f"{esc(x_label)}</text>"
    )
    out.append(
        f'<text x="14" y="{top + ph / 2}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + ph / 2})">{esc(y_label)}</text>'
    )
    for i, (name, s) in enumerate(series.items()):
        color = palette[i % len(palette)]
        path = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in s)
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>')
        for a, b in s:
            out.append(f'<circle cx="{sx(a):.1f}" cy="{sy(b):.1f}" r="3" fill="{color}"/>')
        out.append(
            f'<text x="{left + pw - 8}" y="{top + 16 + 14 * i}" font-size="12" '
            f'text-anchor="end" fill="{color}">{esc(name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)
