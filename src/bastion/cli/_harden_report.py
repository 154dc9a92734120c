"""The before/after report of ``bastion harden``: summary, console table, report files.

The HTML page is drawn by :mod:`bastion.report.harden`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from bastion import __version__
from bastion._io import atomic_write_bytes, atomic_write_json, atomic_write_text
from bastion.cli._common import console
from bastion.report.document import json_safe
from bastion.report.harden import TITLES, render_harden_html

__all__ = ["print_summary", "summarise", "write_report"]


def summarise(
    defence: str,
    before: dict[str, Any],
    after: dict[str, Any],
    privacy: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``{metric: {"before", "after", "change"}}`` for the headline metrics of ``defence``
    (with ``privacy``, the membership attack's AUC and TPR at 1% FPR before and after)."""

    def row(b: float | None, a: float | None) -> dict[str, float | None]:
        change = None if a is None or b is None else a - b
        return {"before": b, "after": a, "change": change}

    out = {
        "clean_accuracy": row(before["clean_accuracy"], after["clean_accuracy"]),
        "robust_accuracy": row(before["robust_accuracy"], after["robust_accuracy"]),
    }
    if defence == "smooth":
        out["certified_accuracy"] = row(
            before["certified"]["certified_accuracy"], after["certified"]["certified_accuracy"]
        )
        out["smoothed_accuracy"] = row(
            before["certified"]["accuracy"], after["certified"]["accuracy"]
        )
    if defence == "dp":
        out["epsilon"] = row(before.get("epsilon"), after.get("epsilon"))
    if privacy is not None:
        for key in ("auc", "tpr_at_1pct_fpr", "tpr_at_0_1pct_fpr"):
            out[f"membership_{key}"] = row(privacy["before"][key], privacy["after"][key])
    return out


def write_report(
    doc: dict[str, Any], out_dir: str | Path, model_bytes: bytes
) -> tuple[Path, Path, Path]:
    """Write ``report.json``, ``report.html`` and ``model.pt`` atomically into ``out_dir``."""
    out = Path(out_dir)
    clean = json_safe({"bastion_version": __version__, **doc})
    model_path = atomic_write_bytes(out / "model.pt", model_bytes)
    json_path = atomic_write_json(out / "report.json", clean)
    html_path = atomic_write_text(out / "report.html", render_harden_html(clean))
    return json_path, html_path, model_path


def _fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "∞" if metric == "epsilon" else "—"
    return f"{value:.4g}" if metric == "epsilon" else f"{value:.3f}"


def print_summary(doc: dict[str, Any]) -> None:
    threat = doc["threat"]
    table = Table(
        title=f"{TITLES[doc['defence']]}: before/after ({threat['norm']}, eps {threat['eps']})"
    )
    for col in ("metric", "before", "after", "change"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for metric, r in doc["summary"].items():
        change = "—" if r["change"] is None else f"{r['change']:+.3f}"
        table.add_row(metric, _fmt(metric, r["before"]), _fmt(metric, r["after"]), change)
    console.print(table)
    for w in doc["after"]["warnings"]:
        console.print(f"[yellow]warning (hardened model):[/] {w}")
