"""Render an audit document (``bastion.audit/1``) in any registered format, or write several.

>>> {"json", "html", "md"} <= set(RENDERERS)
True

Other formats register themselves in :data:`RENDERERS` (a function from the document to text)
with the file name they are written to in :data:`FILE_NAMES`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bastion._io import atomic_write_text
from bastion.errors import ConfigurationError, InputError

__all__ = [
    "FILE_NAMES",
    "RENDERERS",
    "json_safe",
    "render",
    "render_json",
    "schema",
    "validate_document",
    "write_report",
]

SCHEMA_ID = "bastion.audit/1"


def json_safe(value: Any) -> Any:
    """Replace non-finite floats (not valid JSON) with None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def schema() -> dict[str, Any]:
    """The packaged JSON Schema of ``bastion.audit/1``."""
    from bastion.audit.document import _validator

    return dict(_validator().schema)


def validate_document(doc: Any) -> None:
    """Raise :class:`InputError` naming the first place where ``doc`` breaks the schema
    (one validator for the whole project: :func:`bastion.audit.document.validate_document`)."""
    from bastion.audit.document import validate_document as validate

    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA_ID:
        found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise InputError(f"not a {SCHEMA_ID} document (schema is {found!r}); "
                         "re-run the audit with this version of bastion")
    validate(doc)


def render_json(doc: dict[str, Any]) -> str:
    """The document itself, indented; non-finite numbers become null."""
    return json.dumps(json_safe(doc), indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def _html(doc: dict[str, Any]) -> str:
    from bastion.report.audit_html import render_html

    return render_html(doc)


def _md(doc: dict[str, Any]) -> str:
    from bastion.report.markdown import render_markdown

    return render_markdown(doc)


def _sarif(doc: dict[str, Any]) -> str:
    from bastion.report.formats import audit_sarif

    return audit_sarif(doc)


def _junit(doc: dict[str, Any]) -> str:
    from bastion.report.formats import audit_junit

    return audit_junit(doc)


def _cyclonedx(doc: dict[str, Any]) -> str:
    from bastion.report.formats import audit_mlbom

    return audit_mlbom(doc)


#: Format name → function rendering an audit document to text. Add formats here.
RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "json": render_json,
    "html": _html,
    "md": _md,
    "sarif": _sarif,
    "junit": _junit,
    "cyclonedx": _cyclonedx,
}
#: Format name → file name ``write_report`` writes it to (``report.<format>`` when absent).
FILE_NAMES: dict[str, str] = {
    "json": "report.json",
    "html": "report.html",
    "md": "report.md",
    "sarif": "report.sarif",
    "junit": "report.junit.xml",
    "cyclonedx": "report.cdx.json",
}


def render(doc: dict[str, Any], fmt: str, *, validate: bool = True) -> str:
    """Render the audit document ``doc`` as ``fmt`` (a key of :data:`RENDERERS`).

    The document is checked against the schema first (``validate=False`` skips that for a
    document just built and validated by the caller).
    """
    if fmt not in RENDERERS:
        raise ConfigurationError(
            f"unknown report format {fmt!r}; choose from {', '.join(sorted(RENDERERS))}")
    if validate:
        validate_document(doc)
    return RENDERERS[fmt](doc)


def write_report(
    doc: dict[str, Any],
    out_dir: str | Path,
    formats: Iterable[str] = ("json", "html", "md"),
) -> dict[str, Path]:
    """Write ``doc`` in each of ``formats`` into ``out_dir``; returns ``{format: path}``.

    Every format is rendered before anything is written, and each file is written to a
    temporary file and renamed, so a failure leaves no half-written report. Existing files are
    replaced: whether that is allowed is the caller's decision.
    """
    formats = list(dict.fromkeys(formats))
    validate_document(doc)
    texts = {fmt: render(doc, fmt, validate=False) for fmt in formats}
    out = Path(out_dir)
    return {
        fmt: atomic_write_text(out / FILE_NAMES.get(fmt, f"report.{fmt}"), text)
        for fmt, text in texts.items()
    }
