"""``bastion report diff`` and ``bastion verify-audit``: audits that teams share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from bastion.cli._common import console, err_console, fail, handle_errors

__all__ = ["register", "report_app"]

report_app = typer.Typer(
    name="report", help="Re-render, compare and verify audit reports.", no_args_is_help=True
)


def read_document(path: Path) -> dict[str, Any]:
    """Read an audit document (``report.json``, or a folder holding one) with a clear error."""
    p = path / "report.json" if path.is_dir() else path
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise fail(f"cannot read {escape(str(p))}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise fail(f"{escape(str(p))} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != "bastion.audit/1":
        raise fail(f"{escape(str(p))} is not a bastion audit report (schema bastion.audit/1)")
    return doc


def _diff_table(diff: Any) -> Table:
    table = Table(title="Findings", show_lines=False)
    for col in ("change", "severity", "finding", "check", "fingerprint"):
        table.add_column(col, overflow="fold")
    for f in (*diff.new, *diff.fixed, *diff.unchanged):
        style = {"new": "red", "fixed": "green"}.get(f.status, "")
        table.add_row(f"[{style}]{f.status}[/]" if style else f.status, f.severity,
                      escape(f.title), escape(f.check), f.fingerprint)
    return table if diff.new or diff.fixed or diff.unchanged else Table(title="No findings")


@report_app.command("diff")
@handle_errors
def diff_command(
    old: Path = typer.Argument(..., help="The baseline: an older report.json (or its folder)."),
    new: Path = typer.Argument(..., help="The newer report.json (or its folder)."),
    fmt: str = typer.Option("table", "--format", help="table, json or md."),
    out: Path | None = typer.Option(None, "--out", help="Write to this file instead of stdout."),
    fail_on: str | None = typer.Option(
        None, "--fail-on", help="Exit 1 when a NEW finding is at or above this severity."
    ),
) -> None:
    """List new, fixed and unchanged findings and the metric changes per check.

    A metric change is called a regression only when each value lies outside the other
    audit's 95% interval.
    """
    from bastion._io import atomic_write_text
    from bastion.audit.baseline import diff_documents, failing_findings, parse_fail_on
    from bastion.report.formats import CHANGE_WORDS, diff_markdown, estimate_text

    if fmt not in {"table", "json", "md"}:
        raise fail(f"--format {escape(fmt)}: use table, json or md")
    gate = parse_fail_on(fail_on) if fail_on else None
    before, after = read_document(old), read_document(new)
    diff = diff_documents(before, after)
    if fmt == "json":
        text = json.dumps(diff.to_dict(), indent=2)
    elif fmt == "md":
        text = diff_markdown(diff)
    else:
        text = ""
    if out is not None:
        if fmt == "table":
            raise fail("--out needs --format json or md")
        atomic_write_text(out, text + "\n")
        s = diff.to_dict()["summary"]
        err_console.print(
            f"wrote {escape(str(out))}: {s['new']} new, {s['fixed']} fixed, "
            f"{s['unchanged']} unchanged, {s['regressions']} regression(s)", highlight=False,
        )
    elif fmt == "table":
        console.print(_diff_table(diff))
        metrics = Table(title="Metrics")
        for col in ("check", "metric", "before", "after", "change"):
            metrics.add_column(col, overflow="fold")
        for m in diff.metrics:
            metrics.add_row(escape(m.check), escape(m.metric),
                            estimate_text(m.before, m.ci_before),
                            estimate_text(m.after, m.ci_after), CHANGE_WORDS[m.change])
        console.print(metrics)
    else:
        typer.echo(text)
    if gate is not None:
        from dataclasses import replace

        bad = failing_findings(after, replace(gate, new_only=True), baseline=before)
        if bad:
            err_console.print(
                f"{len(bad)} new finding(s) at or above {gate.severity.value}", highlight=False
            )
            raise typer.Exit(1)


@handle_errors
def verify_audit_command(
    audit: Path = typer.Argument(..., help="The audit folder (report.json + attestation)."),
    model: Path = typer.Option(..., "--model", help="The model file or folder to check it for."),
    key: Path = typer.Option(..., "--key", help="The trusted public key (PEM)."),
) -> None:
    """Check that an audit's report belongs to this exact model and was not edited.

    Exit 0 when it does; exit 1 naming what failed: the signature (wrong key or altered
    attestation), the report (edited after signing) or the model (another model).
    """
    from bastion.audit.attest import verify_audit

    if not model.exists():
        raise fail(f"model {escape(str(model))} does not exist")
    result = verify_audit(audit, key=key, model=model)
    if result.ok:
        att = result.attestation
        verdict = (att.verdict if att else {}).get("status", "?")
        console.print(f"[green]verified[/]: {escape(result.message)} (audit of "
                      f"{escape(att.created if att else '?')}, verdict {escape(str(verdict))})",
                      highlight=False)
        return
    err_console.print(f"[bold red]{result.problem}:[/] {escape(result.message)}",
                      highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def register(app: typer.Typer) -> typer.Typer:
    app.add_typer(report_app)
    app.command("verify-audit")(verify_audit_command)
    return report_app
