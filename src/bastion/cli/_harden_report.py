"""The before/after report of ``bastion harden``: summary, console table, JSON and HTML."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from bastion import __version__
from bastion._io import atomic_write_bytes, atomic_write_json, atomic_write_text
from bastion.cli._common import console
from bastion.report.html import esc, findings_html, line_chart_svg, render_html_page, table_html
from bastion.report.writers import json_safe

__all__ = ["print_summary", "render_html", "summarise", "write_report"]

_TITLES = {
    "adversarial": "Adversarial training",
    "dp": "Differentially private training (DP-SGD)",
    "smooth": "Randomized smoothing",
}


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
    html_path = atomic_write_text(out / "report.html", render_html(clean))
    return json_path, html_path, model_path


def _fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "∞" if metric == "epsilon" else "—"
    return f"{value:.4g}" if metric == "epsilon" else f"{value:.3f}"


def print_summary(doc: dict[str, Any]) -> None:
    threat = doc["threat"]
    table = Table(
        title=f"{_TITLES[doc['defence']]}: before/after ({threat['norm']}, eps {threat['eps']})"
    )
    for col in ("metric", "before", "after", "change"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for metric, r in doc["summary"].items():
        change = "—" if r["change"] is None else f"{r['change']:+.3f}"
        table.add_row(metric, _fmt(metric, r["before"]), _fmt(metric, r["after"]), change)
    console.print(table)
    for w in doc["after"]["warnings"]:
        console.print(f"[yellow]warning (hardened model):[/] {w}")


def _card(value: str, key: str) -> str:
    return (
        f'<div class="card"><div class="v">{esc(value)}</div><div class="k">{esc(key)}</div></div>'
    )


def render_html(doc: dict[str, Any]) -> str:
    """The self-contained ``report.html`` for a hardening report (already JSON-clean)."""
    before, after, summary = doc["before"], doc["after"], doc["summary"]
    threat = doc["threat"]
    where = f"{threat['norm']} eps {threat['eps']:g}"
    cards = [
        _card(
            f"{summary['clean_accuracy']['before']:.1%} → {summary['clean_accuracy']['after']:.1%}",
            "clean accuracy",
        ),
        _card(
            f"{summary['robust_accuracy']['before']:.1%} → "
            f"{summary['robust_accuracy']['after']:.1%}",
            f"robust accuracy (worst case, {where})",
        ),
    ]
    if "certified_accuracy" in summary:
        c = summary["certified_accuracy"]
        cards.append(
            _card(
                f"{c['before']:.1%} → {c['after']:.1%}",
                f"certified accuracy at L2 radius {after['certified']['radius']:g}",
            )
        )
    if "epsilon" in summary:
        eps = summary["epsilon"]["after"]
        cards.append(_card("∞ → " + ("∞" if eps is None else f"{eps:.3g}"), "privacy ε"))
    if "membership_tpr_at_1pct_fpr" in summary:
        tpr = summary["membership_tpr_at_1pct_fpr"]
        cards.append(
            _card(
                f"{tpr['before']:.1%} → {tpr['after']:.1%}",
                "membership attack: TPR at 1% FPR (loss threshold)",
            )
        )
    parts = [f'<div class="cards">{"".join(cards)}</div>', "<h2>Before and after</h2>"]
    parts.append(
        table_html(
            ["metric", "before", "after", "change"],
            [
                [
                    m,
                    _fmt(m, r["before"]),
                    _fmt(m, r["after"]),
                    "—" if r["change"] is None else f"{r['change']:+.3f}",
                ]
                for m, r in summary.items()
            ],
        )
    )
    parts.append(f"<h2>Attacks ({esc(where)})</h2>")
    if doc["defence"] == "smooth":
        parts.append(
            '<p class="muted">The attacks target the base model; the smoothed classifier\'s '
            "guarantee is its certified accuracy below.</p>"
        )
    parts.append(
        table_html(
            ["attack", "robust acc. before", "robust acc. after"],
            [
                [
                    name,
                    before["attacks"][name]["robust_accuracy"],
                    after["attacks"].get(name, {}).get("robust_accuracy"),
                ]
                for name in before["attacks"]
            ],
        )
    )
    curves: dict[str, Sequence[tuple[float, float]]] = {
        label: [(p["eps"], p["robust_accuracy"]) for p in d["curve"]["points"]]
        for label, d in (("before", before), ("after", after))
        if d["curve"]["points"]
    }
    if curves:
        parts.append(f"<h2>Robustness curve ({esc(before['curve']['attack'])})</h2>")
        parts.append(line_chart_svg(curves, x_label="eps", y_label="robust accuracy"))
    if "certified" in after:
        parts.append("<h2>Certified accuracy (randomized smoothing)</h2>")
        cert = after["certified"]
        parts.append(
            f'<p class="muted">σ {cert["sigma"]:g}, n0 {cert["n0"]}, n {cert["n"]}, '
            f"α {cert['alpha']:g}; abstention rate before "
            f"{before['certified']['abstention_rate']:.1%}, "
            f"after {cert['abstention_rate']:.1%}.</p>"
        )
        certified: dict[str, Sequence[tuple[float, float]]] = {
            label: [(p["radius"], p["certified_accuracy"]) for p in d["certified"]["curve"]]
            for label, d in (("before", before), ("after", after))
        }
        parts.append(
            line_chart_svg(
                certified,
                x_label="L2 radius",
                y_label="certified accuracy",
            )
        )
    parts.append("<h2>Training</h2>")
    parts.append(table_html(["setting", "value"], _training_rows(doc)))
    for label, d in (("baseline", before), ("hardened model", after)):
        for w in d["warnings"]:
            parts.append(f'<div class="warn">{esc(label)}: {esc(w)}</div>')
    parts.append("<h2>Findings on the hardened model</h2>")
    parts.append(findings_html(after["findings"]))
    data = doc["data"]
    subtitle = (
        f"data {data['source']} ({data['n_train']} train, {data['n_evaluated']} evaluated) · "
        f"bastion {doc.get('bastion_version', '')}"
    )
    return render_html_page(
        f"Hardening report: {_TITLES[doc['defence']]}", "".join(parts), subtitle
    )


def _training_rows(doc: dict[str, Any]) -> list[list[Any]]:
    training = doc["training"]
    rows: list[list[Any]] = [["baseline", doc["model"].get("arch") or doc["model"].get("file")]]
    for key in ("trainer", "initialisation"):
        if key in training:
            rows.append([key, training[key]])
    for key, value in training.get("privacy", {}).items():
        rows.append([f"privacy {key}", value])
    report = training.get("report", {})
    for key, value in report.items():
        if key not in {"history", "losses"}:
            rows.append([key, value])
    if "losses" in report:
        rows.append(["final loss", report["losses"][-1]])
    return rows
