"""What the single-threat commands share: each runs an audit with one check and writes the
same ``bastion.audit/1`` document (report.json, .html, .md) as ``bastion audit``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from bastion.cli._common import console, parse_floats, parse_shape
from bastion.errors import InputError

__all__ = ["model_options", "print_entry", "run_one_check"]


def model_options(opts: dict[str, Any], *, device: str | None = None) -> dict[str, Any]:
    """The audit's ``model_options`` from the usual ``--bounds/--input-shape/--factory/
    --num-classes/--trust-pickle`` options."""
    lo, hi = parse_floats(opts["bounds"], "--bounds", 2)
    out: dict[str, Any] = {
        "bounds": [lo, hi],
        "trust_pickle": bool(opts.get("trust_pickle", False)),
        "device": device or opts.get("device") or "cpu",
    }
    shape = parse_shape(opts.get("input_shape"))
    if shape is not None:
        out["input_shape"] = list(shape)
    if opts.get("factory"):
        out["factory"] = opts["factory"]
    if opts.get("num_classes") is not None:
        out["num_classes"] = opts["num_classes"]
    return out


def run_one_check(
    check: str, config: Any, *, command: str, quiet: bool = True, force: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run ``check`` alone on ``config``, write the reports into ``config.out`` and print the
    check's table, summary and findings. Returns the document and the check's entry; a check
    that errs or cannot run is the command's one-line error (exit 2)."""
    from bastion.audit.runner import run_audit
    from bastion.cli.evaluate import one_check, refuse_existing, write_reports

    out: Path = config.out
    refuse_existing(out, force)
    outcome = run_audit(
        config, checks=(check,), command=command, fresh=True, progress=not quiet, write=False
    )
    for e in outcome.document["checks"]:
        if e["name"] == check and e["status"] == "not_run" and e.get("enable"):
            raise InputError(f"{e['reason']}; {e['enable']}")
    entry = one_check(outcome.document, check)
    written = write_reports(outcome.document, out)
    print_entry(entry)
    console.print("wrote " + ", ".join(str(p) for p in written.values()))
    return outcome.document, entry


def print_entry(entry: dict[str, Any]) -> None:
    """A check entry's first table, its summary and one line per finding."""
    for table_doc in entry.get("tables", [])[:1]:
        table = Table(title=table_doc["title"])
        for i, col in enumerate(table_doc["columns"]):
            table.add_column(col, justify="left" if i == 0 else "right")
        for row in table_doc["rows"]:
            table.add_row(*(_cell(v) for v in row))
        console.print(table)
    if entry.get("summary"):
        console.print(entry["summary"])
    for f in entry.get("findings", []):
        console.print(f"[bold]{f['severity'].upper()}[/] {f['id']}: {f['title']}")


def _cell(value: Any) -> str:
    from bastion.cli.evaluate import _cell as scalar_cell

    if isinstance(value, list):
        return "[" + ", ".join(scalar_cell(v) for v in value) + "]"
    return scalar_cell(value)
