"""The Jinja2 environment of every HTML report: autoescaped templates and their filters.

Every name in a report (models, features, files, classes) may come from an untrusted file, so
autoescaping is on for every template and no filter marks text as safe, except those that
return markup drawn by matplotlib (:func:`chart`) or built from escaped parts. The pages are
self-contained: inline CSS and charts, no scripts, and a Content-Security-Policy that forbids
scripts and every network request should a report ever be served.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from markupsafe import Markup

__all__ = ["environment", "fmt_number", "render_template"]

STATUS_SYMBOLS = {
    "passed": "✓",
    "failed": "✗",
    "not_run": "○",
    "error": "!",
    "partial": "◐",
    "n/a": "–",
    "incomplete": "◐",
}
STATUS_WORDS = {"not_run": "not run", "n/a": "n/a"}
SEVERITY_ORDER = ("critical", "high", "medium", "low", "info")


def fmt_number(value: Any, digits: int = 4) -> str:
    """A number as a reader wants it: ``0.4213``, ``1,250``, ``3.2e-05``; ``—`` for none."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        if value.is_integer() and abs(value) < 1e15:
            return f"{int(value):,}"
        return f"{value:.{digits}g}"
    return str(value)


def fmt_ci(ci: Any, digits: int = 3) -> str:
    if not ci or len(ci) != 2 or ci[0] is None or ci[1] is None:
        return "—"
    return f"{fmt_number(float(ci[0]), digits)} – {fmt_number(float(ci[1]), digits)}"


def status_word(status: str) -> str:
    return STATUS_WORDS.get(status, status)


def status_chip(status: str) -> Markup:
    """A coloured chip with a symbol and the word, readable without colour."""
    css = str(status).replace("/", "").replace("_", "-")
    return Markup('<span class="chip st-{}"><span aria-hidden="true">{}</span> '
                  '<span class="w">{}</span></span>').format(
        css, STATUS_SYMBOLS.get(status, "?"), status_word(status)
    )


def severity_badge(severity: str) -> Markup:
    return Markup('<span class="sev sev-{}">{}</span>').format(
        severity, str(severity).upper()
    )


def chart(plot: dict[str, Any]) -> Markup:
    """Inline SVG of a chart (matplotlib output: text drawn as paths, nothing to escape)."""
    from bastion.report.plots import svg

    return Markup(svg(plot))  # noqa: S704 - matplotlib's SVG, no document text as markup


def _humanise(name: str) -> str:
    return str(name).replace("_", " ").replace("-", " ").capitalize()


@functools.cache
def environment() -> Any:
    """The shared environment; templates live in ``bastion/report/templates``."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("bastion.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        num=fmt_number,
        ci=fmt_ci,
        status_chip=status_chip,
        status_word=status_word,
        severity_badge=severity_badge,
        chart=chart,
        humanise=_humanise,
    )
    return env


def render_template(name: str, **context: Any) -> str:
    """Render one of the package's templates with ``context``."""
    from bastion import __version__

    context.setdefault("bastion_version", __version__)
    return str(environment().get_template(name).render(**context))
