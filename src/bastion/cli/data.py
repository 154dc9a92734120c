"""``bastion data``: infer a data contract and validate data against it.

Exit codes: 0 the data pass, 1 the contract failed, 2 an error (unreadable file, bad YAML or
option).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from bastion.cli._common import console, fail, fmt_value, handle_errors

if TYPE_CHECKING:
    from bastion.data.contracts import Contract

__all__ = [
    "EXIT_FAILED",
    "contract_summary",
    "data_app",
    "register",
]

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
        0.1, "--range-tolerance", min=0.0,
        help=("Widen each numeric range by this fraction of it (max - min) on each side; "
              "a column never seen negative stays >= 0.")),
    report_dir: Path | None = typer.Option(
        None, "--report-dir",
        help="Folder for report.json and report.html (default: the contract's folder)."),
    immutable: list[str] | None = typer.Option(
        None, "--immutable", help="A column attacks may never change (repeatable)."),
    cost: list[str] | None = typer.Option(
        None, "--cost", help="COLUMN=VALUE: the cost of a unit change of a column (repeatable)."),
    one_hot: list[str] | None = typer.Option(
        None, "--one-hot", help="GROUP=COL1,COL2,...: a one-hot encoded group (repeatable)."),
) -> None:
    """Infer a human-editable YAML contract from reference data."""
    from bastion._io import atomic_write_json, atomic_write_text
    from bastion.data.contracts import infer_contract, save_contract
    from bastion.report.data import render_contract_html

    contract = infer_contract(
        data, name=name or data.stem, categorical=tuple(categorical or ()),
        categorical_max=categorical_max, range_tolerance=range_tolerance,
        immutable=tuple(immutable or ()), costs=_costs(cost or []),
        one_hot=_groups(one_hot or []),
    )
    save_contract(contract, out)
    doc = {"data": str(data), "contract_file": str(out), **contract_summary(contract)}
    folder = report_dir if report_dir is not None else out.parent
    atomic_write_json(folder / "report.json", doc)
    atomic_write_text(folder / "report.html", render_contract_html(doc))
    what = (f"{len(contract.columns)} columns" if contract.kind == "table"
            else f"shape {list(contract.shape)}")
    console.print(f"wrote {contract.kind} contract [bold]{contract.name}[/] ({what}) to {out}",
                  highlight=False)
    for col in doc.get("columns", []):
        if col["accepted"] is not None:
            console.print(f"  {col['name']}: seen {_accepted_text([col['min'], col['max']])}, "
                          f"accepts {_accepted_text(col['accepted'])}", highlight=False)


def _costs(items: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        col, sep, value = item.partition("=")
        try:
            out[col] = float(value)
        except ValueError:
            raise fail(f"--cost {item!r}: expected COLUMN=NUMBER") from None
        if not sep or not col:
            raise fail(f"--cost {item!r}: expected COLUMN=NUMBER")
    return out


def _groups(items: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        group, sep, cols = item.partition("=")
        if not sep or not group or not cols:
            raise fail(f"--one-hot {item!r}: expected GROUP=COL1,COL2,...")
        out[group] = [c.strip() for c in cols.split(",") if c.strip()]
    return out


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
    from bastion.data.contracts.drift_plots import drift_plots
    from bastion.report.data import render_validation_html

    if not contract_path.is_file():
        raise fail(f"no such contract file: {contract_path}")
    contract = load_contract(contract_path)
    report = validate(data, contract, distribution=not no_distribution, fdr=fdr)
    doc = {"data": str(data), "contract_file": str(contract_path), **report.to_dict()}
    doc["plots"] = drift_plots(data, contract, doc["drift"])
    atomic_write_json(out / "report.json", doc)
    atomic_write_text(out / "report.html", render_validation_html(doc))
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


def contract_summary(contract: Contract) -> dict[str, Any]:
    """What a contract checks, as a JSON-ready dict (the infer-contract report)."""
    from bastion.data.contracts import TableContract
    from bastion.data.contracts.validate import accepted_range

    ref = contract.reference
    doc: dict[str, Any] = {"contract": contract.name, "kind": contract.kind,
                           "version": contract.version, "n_reference": ref.n,
                           "range_tolerance": contract.range_tolerance}
    if isinstance(contract, TableContract):
        doc["columns"] = [
            {"name": c.name, "kind": c.kind, "dtype": c.dtype, "nullable": c.nullable,
             "missing_rate": ref.missing.get(c.name, 0.0), "min": c.min, "max": c.max,
             "accepted": _listed(accepted_range(c, contract.range_tolerance)),
             "categories": None if c.categories is None else len(c.categories),
             "unique": c.unique, "mean": c.mean, "std": c.std}
            for c in contract.columns]
    else:
        doc.update(shape=list(contract.shape), dtype=contract.dtype, min=contract.min,
                   max=contract.max, allow_nan=contract.allow_nan,
                   channels=[dict(c) for c in contract.channels],
                   features=sorted(k for k in ref.sketches if k != "values"))
    return doc


def _listed(pair: tuple[Any, Any] | None) -> list[Any] | None:
    return None if pair is None else list(pair)


def _accepted_text(pair: list[Any] | None) -> str | None:
    return None if pair is None else f"{fmt_value(pair[0])} to {fmt_value(pair[1])}"
