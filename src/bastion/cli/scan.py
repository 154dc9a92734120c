"""``bastion scan PATH...``: scan model files statically and exit with what was found.

A PATH may be ``s3://BUCKET/PREFIX`` (every object under it; ``?endpoint_url=...`` for an
S3-compatible service); ``--executor`` spreads batches of files over processes or a Ray cluster.

Exit codes: 0 every file clean, 1 something unsafe, 2 a file could not be scanned (or a bad
path or option; with --strict, a file was skipped), 3 nothing scanned.
"""

from __future__ import annotations

import io
import os
import tempfile
from enum import StrEnum
from pathlib import Path

import typer

from bastion.cli._common import EXECUTOR_HELP, console, fail, handle_errors, parse_executor

__all__ = ["register"]


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    sarif = "sarif"
    html = "html"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def register(app: typer.Typer) -> None:
    @app.command("scan")
    @handle_errors
    def scan(
        paths: list[str] = typer.Argument(
            ..., help="Model files or folders, or s3://BUCKET/PREFIX[?endpoint_url=URL]."
        ),
        output_format: OutputFormat = typer.Option(
            OutputFormat.table, "--format", "-f", help="table, json, sarif or html (a page)."
        ),
        out: Path | None = typer.Option(None, "--out", "-o", help="Write the report here."),
        max_depth: int = typer.Option(5, "--max-depth", min=0,
                                      help="How deeply containers may nest."),
        max_bytes: int = typer.Option(1 << 30, "--max-bytes", min=1,
                                      help="Bytes that may be decompressed per file."),
        strict: bool = typer.Option(False, "--strict",
                                    help="Exit 2 when a file was skipped (not a model format)."),
        executor: str | None = typer.Option(None, "--executor", help=EXECUTOR_HELP),
    ) -> None:
        """Scan model files without loading them; report code that would run on load."""
        from bastion.artifacts.scan import render_json, render_sarif, render_table, scan_targets

        missing = [p for p in paths if not p.startswith("s3://") and not Path(p).exists()]
        if missing:
            raise fail(f"no such file or folder: {', '.join(missing)}")
        report = scan_targets(paths, executor=parse_executor(executor), max_depth=max_depth,
                              max_bytes=max_bytes, strict=strict)
        if output_format is OutputFormat.table:
            if out is not None:
                from rich.console import Console

                buf = io.StringIO()
                render_table(report, Console(file=buf, width=200, no_color=True))
                _write_atomic(out, buf.getvalue())
            else:
                render_table(report, console)
        else:
            if output_format is OutputFormat.html:
                from bastion.report.scan import render_scan_html

                text = render_scan_html(report.to_dict()).rstrip("\n")
            elif output_format is OutputFormat.json:
                text = render_json(report)
            else:
                text = render_sarif(report)
            if out is not None:
                _write_atomic(out, text + "\n")
            else:
                typer.echo(text)
        if out is not None:
            counts = report.counts
            console.print(
                f"wrote {output_format.value} report {out}: {len(report.files)} file(s), "
                f"{counts['clean']} clean, {counts['unsafe']} unsafe, {counts['error']} error, "
                f"{counts['skipped']} skipped",
                highlight=False, soft_wrap=True,
            )
        raise typer.Exit(report.exit_code)
