"""``bastion data``: infer a data contract and validate data against it.

Exit codes: 0 the data pass, 1 the contract failed, 2 an error (unreadable file, bad YAML or
option).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from bastion.cli._common import console, fail, handle_errors

__all__ = ["EXIT_FAILED", "data_app", "register", "report_html"]

#: exit code when the data violate the contract
EXIT_FAILED = 1

data_app = typer.Typer(
    help="Data contracts: infer one from reference data, validate batches against it.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group to ``app``."""
    app.add_typer(data_app, name="data")


@data_app.command("infer-contract")
@handle_errors
def infer_contract_cmd(
    data: Path = typer.Argument(..., help="Reference data: .csv, .parquet, .npy or .npz."),
    out: Path = typer.Option(Path("contract.yaml"), "--out", "-o", help="Contract to write."),
    name: str | None = typer.Option(None, "--name", help="Contract name (default: file stem)."),
    categorical: list[str] | None = typer.Option(
        None, "--categorical", "-c", help="A column to treat as categorical (repeatable)."),
    categorical_max: int = typer.Option(
        50, "--categorical-max", min=1,
        help="Text columns with at most this many distinct values are categorical."),
    range_tolerance: float = typer.Option(
        0.1, "--range-tolerance", min=0.0, help="Widen each range by this fraction of it."),
) -> None:
    """Infer a human-editable YAML contract from reference data."""
    from bastion.data.contracts import infer_contract, save_contract

    contract = infer_contract(
        data, name=name or data.stem, categorical=tuple(categorical or ()),
        categorical_max=categorical_max, range_tolerance=range_tolerance,
    )
    save_contract(contract, out)
    what = (f"{len(contract.columns)} columns" if contract.kind == "table"
            else f"shape {list(contract.shape)}")
    console.print(f"wrote {contract.kind} contract [bold]{contract.name}[/] ({what}) to {out}",
                  highlight=False)


@data_app.command("validate")
@handle_errors
def validate_cmd(
    data: Path = typer.Argument(..., help="Data to check: .csv, .parquet, .npy or .npz."),
    contract_path: Path = typer.Option(..., "--contract", help="Contract YAML file."),
    out: Path = typer.Option(Path("data-report"), "--out", "-o",
                             help="Folder for report.json and report.html."),
    fdr: float = typer.Option(0.05, "--fdr", help="False discovery rate of drift tests."),
    no_distribution: bool = typer.Option(
        False, "--no-distribution", help="Schema rules only; skip drift tests."),
) -> None:
    """Validate data against a contract; exit 1 when the contract fails."""
    from bastion._io import atomic_write_json, atomic_write_text
    from bastion.data.contracts import load_contract, validate

    if not contract_path.is_file():
        raise fail(f"no such contract file: {contract_path}")
    contract = load_contract(contract_path)
    report = validate(data, contract, distribution=not no_distribution, fdr=fdr)
    doc = {"data": str(data), "contract_file": str(contract_path), **report.to_dict()}
    atomic_write_json(out / "report.json", doc)
    atomic_write_text(out / "report.html", report_html(doc))
    style = "green" if report.ok else "bold red"
    console.print(f"[{style}]{'PASS' if report.ok else 'FAIL'}[/] {report.summary()}",
                  highlight=False)
    for v in report.errors[:10]:
        console.print(f"  {v.rule}: {v.message}", highlight=False)
    if len(report.errors) > 10:
        console.print(f"  … {len(report.errors) - 10} more in {out / 'report.json'}",
                      highlight=False)
    console.print(f"reports in {out}", highlight=False)
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


def report_html(doc: dict[str, Any]) -> str:
    """A self-contained HTML page of a validation report (``ValidationReport.to_dict``)."""
    from bastion.report.html import esc, render_html_page, table_html

    verdict = "PASS" if doc["ok"] else "FAIL"
    cards = "".join(
        f'<div class="card"><div class="v">{esc(v)}</div><div class="k">{esc(k)}</div></div>'
        for k, v in (("verdict", verdict), ("rows", doc["n_rows"]), ("errors", doc["n_errors"]),
                     ("warnings", doc["n_warnings"]),
                     ("drifted", sum(d["drifted"] for d in doc["drift"]))))
    body = [f'<div class="cards">{cards}</div>', "<h2>Violations</h2>"]
    if doc["violations"]:
        ordered = sorted(doc["violations"], key=lambda v: v["severity"] != "error")
        body.append(table_html(
            ["severity", "rule", "row", "column", "index", "value", "expected", "message"],
            [[v["severity"], v["rule"], v["row"], v["column"],
              None if v["index"] is None else str(tuple(v["index"])),
              None if v["value"] is None else str(v["value"]),
              None if v["expected"] is None else str(v["expected"]), v["message"]]
             for v in ordered]))
    else:
        body.append('<p class="muted">No violations.</p>')
    body.append(f"<h2>Distribution tests (Benjamini–Hochberg, FDR {esc(doc['fdr'])})</h2>")
    if doc["drift"]:
        body.append(table_html(
            ["column", "test", "statistic", "p", "q", "PSI", "drifted"],
            [[d["column"], d["test"], d["statistic"], d["p_value"], d["q_value"], d["psi"],
              "yes" if d["drifted"] else "no"] for d in doc["drift"]]))
    else:
        body.append('<p class="muted">No distribution tests were run.</p>')
    return render_html_page(f"Data validation: {doc['contract']}", "".join(body),
                            subtitle=f"{doc.get('data', '')} · {verdict}")
