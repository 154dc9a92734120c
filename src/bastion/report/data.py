"""Pages of ``bastion data``: a validation report (with the drifted columns drawn) and an
inferred contract (with the range each column accepts)."""

from __future__ import annotations

from typing import Any

from bastion.report.templating import render_template

__all__ = ["MAX_VIOLATION_ROWS", "render_contract_html", "render_validation_html"]

#: violations listed on the page (all of them are in report.json)
MAX_VIOLATION_ROWS = 500


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_text(v) or "—" for v in value) + "]"
    return str(value)


def render_validation_html(doc: dict[str, Any]) -> str:
    """The page of a validation report (``ValidationReport.to_dict()`` plus ``data``,
    ``contract_file`` and, optionally, ``plots`` of the drifted columns)."""
    ordered = sorted(doc["violations"], key=lambda v: v["severity"] != "error")
    violations = [[v["severity"], v["rule"], v["row"], v["column"],
                   None if v["index"] is None else str(tuple(v["index"])),
                   _text(v["value"]), _text(v["expected"]), v["message"]]
                  for v in ordered[:MAX_VIOLATION_ROWS]]
    groups: dict[tuple[str, str, str], list[Any]] = {}
    for v in ordered:
        key = (v["severity"], v["rule"], str(v["column"] or "—"))
        groups.setdefault(key, [*key, 0, v["message"]])[3] += 1
    drifted = sum(bool(d["drifted"]) for d in doc["drift"])
    return render_template(
        "data_validation.html.j2",
        title=f"Data validation: {doc['contract']}",
        contract=doc["contract"],
        data=doc.get("data", ""),
        contract_file=doc.get("contract_file", ""),
        verdict="passed" if doc["ok"] else "failed",
        cards=[("PASS" if doc["ok"] else "FAIL", "verdict"), (doc["n_rows"], "rows"),
               (doc["n_errors"], "errors"), (doc["n_warnings"], "warnings"),
               (drifted, "drifted columns")],
        violations=violations,
        groups=list(groups.values()),
        more=max(0, len(ordered) - MAX_VIOLATION_ROWS),
        fdr=doc["fdr"],
        drift=[[d["column"], d["test"], d["statistic"], d["p_value"], d["q_value"], d["psi"],
                "yes" if d["drifted"] else "no"] for d in doc["drift"]],
        plots=doc.get("plots", []),
    )


def render_contract_html(doc: dict[str, Any]) -> str:
    """The page of an inferred contract (``bastion.cli.data.contract_summary`` plus ``data``
    and ``contract_file``)."""
    facts: list[tuple[Any, str]] = [(doc["kind"], "kind"), (doc["n_reference"], "reference rows")]
    columns = values = channels = None
    if doc["kind"] == "table":
        facts.append((len(doc["columns"]), "columns"))
        columns = [[c["name"], c["kind"], c["dtype"], c["nullable"], c["missing_rate"],
                    c["min"], c["max"],
                    None if c.get("accepted") is None
                    else f"{_text(c['accepted'][0])} to {_text(c['accepted'][1])}",
                    c["categories"], c["unique"], c["mean"], c["std"]]
                   for c in doc["columns"]]
    else:
        facts += [("×".join("n" if s is None else str(s) for s in doc["shape"]), "shape"),
                  (doc["dtype"], "dtype")]
        values = [[doc["min"], doc["max"], doc["allow_nan"]]]
        channels = [[i, c["mean"], c["std"], c["min"], c["max"]]
                    for i, c in enumerate(doc["channels"])]
    return render_template(
        "data_contract.html.j2",
        title=f"Data contract: {doc['contract']}",
        contract=doc["contract"],
        data=doc.get("data", ""),
        contract_file=doc.get("contract_file", ""),
        cards=facts,
        range_tolerance=doc["range_tolerance"],
        columns=columns,
        values=values,
        channels=channels,
    )
