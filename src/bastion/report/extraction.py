"""``bastion evaluate extraction``: the report files of a model-extraction run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bastion import __version__
from bastion._io import atomic_write_json, atomic_write_text
from bastion.report.document import json_safe
from bastion.report.templating import render_template

__all__ = ["render_extraction_html", "write_extraction_report"]


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.1%}"


def render_extraction_html(doc: dict[str, Any]) -> str:
    """The self-contained page of an extraction report (findings already in ``doc``)."""
    a = doc["attack"]
    cards = [
        (_pct(a.get("fidelity")), "fidelity (agreement with the model)"),
        (f"{a['queries']:,} / {a['query_budget']:,}", "queries used / budget"),
        (_pct(a.get("accuracy")), "copy's accuracy"),
        (_pct(a.get("victim_accuracy")), "model's accuracy"),
    ]
    if doc.get("transfer"):
        cards.append((_pct(doc["transfer"]["transfer_rate"]), "transfer rate of adv. examples"))
    history = [(int(q), float(f)) for q, f in a.get("history", [])]
    plot = {"kind": "line", "title": "Fidelity vs queries", "x_label": "queries",
            "y_label": "fidelity (agreement with the model)",
            "series": [{"label": str(doc.get("strategy")), "x": [q for q, _ in history],
                        "y": [f for _, f in history]}]}
    hardening = [[row["policy"], row["accuracy"], row["accuracy_cost"], label,
                  "blocked" if r["blocked"] else r["fidelity"], r["fidelity_drop"]]
                 for row in doc.get("hardening") or [] for label, r in row["attacks"].items()]
    return render_template(
        "extraction.html.j2",
        title="Model extraction",
        model=doc.get("model", ""),
        strategy=doc.get("strategy"),
        access=doc.get("access"),
        cards=cards,
        plot=plot,
        history=[list(h) for h in history],
        hardening=hardening,
        findings=doc.get("findings", []),
        attack=a["attack"],
        params=", ".join(f"{k}={v}" for k, v in a.get("params", {}).items()),
        seconds=a["seconds"],
    )


def write_extraction_report(doc: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` of an extraction report into ``out_dir``."""
    full = json_safe({"bastion_version": __version__, "kind": "extraction", **doc})
    html = render_extraction_html(full)
    out = Path(out_dir)
    return (atomic_write_json(out / "report.json", full),
            atomic_write_text(out / "report.html", html))
