"""``report.html`` of ``bastion harden``: the model before and after a defence.

The page shows the headline metrics before and after, the attacks, the robustness curves (and
the certified-accuracy curves of randomized smoothing), the training settings and the findings
on the hardened model. When the report has a ``privacy`` key (DP training measures membership
inference on both models) it adds a privacy section::

    "privacy": {"before": {"attack": "loss", "n_members": 1000, "auc": 0.62,
                           "tpr_at_1pct_fpr": 0.03, "tpr_at_0_1pct_fpr": 0.004, ...},
                "after":  {...},
                "roc": {"before": {"fpr": [...], "tpr": [...]}, "after": {...}}}  # optional

Each metric is a number or a metric object (``{"value", "ci", "ci_method", "label"}``); text
values are not rows, and ``roc`` (when present) is drawn on log–log axes.
"""

from __future__ import annotations

import re
from typing import Any

from bastion.report.templating import fmt_ci, fmt_number, render_template

__all__ = ["TITLES", "render_harden_html"]

TITLES = {
    "adversarial": "Adversarial training",
    "dp": "Differentially private training (DP-SGD)",
    "smooth": "Randomized smoothing",
}


def _fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "∞" if metric == "epsilon" else "—"
    return f"{value:.4g}" if metric == "epsilon" else f"{value:.3f}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _value(m: Any) -> float | None:
    if isinstance(m, dict):
        m = m.get("value")
    return m if isinstance(m, int | float) and not isinstance(m, bool) else None


def _shown(m: Any) -> str:
    text = fmt_number(_value(m))
    if isinstance(m, dict) and m.get("ci"):
        text += f" ({fmt_ci(m['ci'])})"
    return text


_LABELS = {"auc": "AUC", "advantage": "membership advantage",
           "epsilon_lower": "empirical ε lower bound (95%)", "n_members": "members",
           "n_non_members": "non-members"}


def _metric_label(key: str, m: Any) -> str:
    if isinstance(m, dict) and m.get("label"):
        return str(m["label"])
    pct = re.fullmatch(r"tpr_at_(\d+(?:_\d+)?)pct_fpr", key)
    if pct:
        return f"TPR at {pct.group(1).replace('_', '.')}% FPR"
    if key.startswith("tpr_at_"):
        try:
            return f"TPR at {float(key[7:]) * 100:g}% FPR"
        except ValueError:
            pass
    return _LABELS.get(key, key.replace("_", " "))


def _privacy_view(privacy: dict[str, Any]) -> dict[str, Any]:
    before, after = privacy.get("before") or {}, privacy.get("after") or {}
    rows: list[list[str]] = []
    for key in [*before, *(k for k in after if k not in before)]:
        b, a = before.get(key), after.get(key)
        vb, va = _value(b), _value(a)
        if vb is None and va is None:
            continue  # text (the attack's name) or a curve, not a number
        change = "—" if vb is None or va is None or key.startswith("n_") else f"{va - vb:+.4g}"
        rows.append([_metric_label(key, b if b is not None else a), _shown(b), _shown(a),
                     change])
    rows.sort(key=lambda r: (not r[0].startswith("TPR"), r[0]))  # the low-FPR risk first
    series = []
    for label in ("before", "after"):
        roc = (privacy.get("roc") or {}).get(label) or {}
        if roc.get("fpr") and roc.get("tpr"):
            series.append({"label": label, "x": roc["fpr"], "y": roc["tpr"]})
    plots = [{"kind": "roc", "title": "Membership ROC before and after (log–log)",
              "x_label": "false positive rate", "y_label": "true positive rate",
              "series": series}] if series else []
    attack = privacy.get("attack") or before.get("attack")
    n = privacy.get("n") or before.get("n_members")
    parts = [f"{attack} attack" if attack else "", f"{n} members" if n else ""]
    detail = ", ".join(p for p in parts if p)
    note = ("Membership inference on the baseline and on the hardened model"
            + (f" ({detail})" if detail else "")
            + ". Lower is better: the TPR at a low FPR is the risk to members.")
    return {"rows": rows, "plots": plots, "note": note}


def _curve_plot(title: str, x_label: str, y_label: str,
                curves: dict[str, list[tuple[float, float]]]) -> dict[str, Any]:
    return {"kind": "line", "title": title, "x_label": x_label, "y_label": y_label,
            "series": [{"label": label, "x": [p[0] for p in pts], "y": [p[1] for p in pts]}
                       for label, pts in curves.items() if pts]}


def _training_rows(doc: dict[str, Any]) -> list[list[Any]]:
    training = doc["training"]
    rows: list[list[Any]] = [["baseline", doc["model"].get("arch") or doc["model"].get("file")]]
    method = training.get("method")
    if method:  # adversarial training: which method, with its settings
        rows.append(["method", method["title"]])
        rows.extend([f"setting {k}", v] for k, v in method["settings"].items())
    for key in ("trainer", "initialisation"):
        if key in training:
            rows.append([key, training[key]])
    for key, value in training.get("privacy", {}).items():
        rows.append([f"privacy {key}", value])
    report = training.get("report", {})
    for key, value in report.items():
        if key == "guard" and value:
            rows.append(["overfitting guard", value["summary"]])
        elif key not in {"history", "losses", "settings", "guard"}:
            rows.append([key, value])
    if report.get("losses"):
        rows.append(["final loss", report["losses"][-1]])
    return rows


def render_harden_html(doc: dict[str, Any]) -> str:
    """The self-contained page of a hardening report (already JSON-clean)."""
    before, after, summary = doc["before"], doc["after"], doc["summary"]
    threat = doc["threat"]
    where = f"{threat['norm']} eps {threat['eps']:g}"
    cards = [
        (f"{_pct(summary['clean_accuracy']['before'])} → "
         f"{_pct(summary['clean_accuracy']['after'])}", "clean accuracy"),
        (f"{_pct(summary['robust_accuracy']['before'])} → "
         f"{_pct(summary['robust_accuracy']['after'])}",
         f"robust accuracy (worst case, {where})"),
    ]
    if "certified_accuracy" in summary:
        c = summary["certified_accuracy"]
        cards.append((f"{_pct(c['before'])} → {_pct(c['after'])}",
                      f"certified accuracy at L2 radius {after['certified']['radius']:g}"))
    if "epsilon" in summary:
        eps = summary["epsilon"]["after"]
        cards.append(("∞ → " + ("∞" if eps is None else f"{eps:.3g}"), "privacy ε"))
    privacy = _privacy_view(doc["privacy"]) if doc.get("privacy") else None
    if privacy:  # the risk to members at a low false-positive rate, before → after
        for row in privacy["rows"]:
            if row[0].startswith("TPR at"):
                cards.append((f"{row[1].split(' ')[0]} → {row[2].split(' ')[0]}",
                              f"membership attack: {row[0]}"))
    curves = {label: [(p["eps"], p["robust_accuracy"]) for p in d["curve"]["points"]]
              for label, d in (("before", before), ("after", after)) if d["curve"]["points"]}
    plots = [_curve_plot(f"Robustness curve ({before['curve']['attack']})",
                         f"eps ({threat['norm']})", "robust accuracy", curves)] if curves else []
    certified = None
    certified_plots = []
    if "certified" in after:
        cert = after["certified"]
        certified = {**cert, "abstention_before": _pct(before["certified"]["abstention_rate"]),
                     "abstention_after": _pct(cert["abstention_rate"])}
        certified_plots.append(_curve_plot(
            "Certified accuracy", "L2 radius", "certified accuracy",
            {label: [(p["radius"], p["certified_accuracy"]) for p in d["certified"]["curve"]]
             for label, d in (("before", before), ("after", after))}))
    data = doc["data"]
    return render_template(
        "harden.html.j2",
        title=f"Hardening report: {TITLES.get(doc['defence'], doc['defence'])}"
        + (f" ({doc['training']['method']['name']})" if doc["training"].get("method") else ""),
        subtitle=(f"data {data['source']} ({data['n_train']} train, {data['n_evaluated']} "
                  f"evaluated) · seed {doc.get('seed', 0)} · "
                  f"bastion {doc.get('bastion_version', '')}"),
        cards=cards,
        summary_rows=[[m, _fmt(m, r["before"]), _fmt(m, r["after"]),
                       "—" if r["change"] is None else f"{r['change']:+.3f}"]
                      for m, r in summary.items()],
        privacy=privacy,
        where=where,
        smooth=doc["defence"] == "smooth",
        attack_rows=[[name, before["attacks"][name]["robust_accuracy"],
                      after["attacks"].get(name, {}).get("robust_accuracy")]
                     for name in before["attacks"]],
        plots=plots,
        certified=certified,
        certified_plots=certified_plots,
        training_rows=_training_rows(doc),
        warnings=[f"{label}: {w}" for label, d in (("baseline", before),
                                                    ("hardened model", after))
                  for w in d["warnings"]],
        findings=after["findings"],
        training_findings=doc["training"].get("findings", []),
    )
