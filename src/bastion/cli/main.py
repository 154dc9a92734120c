"""Entry point of the ``bastion`` command: one Typer app, one sub-module per area.

Each area module exposes ``register(app)`` that adds its commands or sub-apps.
"""

from __future__ import annotations

import logging

import typer

from bastion import __version__

app = typer.Typer(
    name="bastion",
    help="Attack, harden, guard and secure machine-learning models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bastion {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="CPU threads for torch (default: torch's choice)."
    ),
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _register_all() -> None:
    from bastion.cli import (
        access,
        audit,
        data,
        evaluate,
        extraction,
        harden,
        inference,
        poison,
        registry,
        report,
        scan,
        serve,
    )

    evaluate_app = evaluate.register(app)
    extraction.register(evaluate_app)
    inference.register(evaluate_app)
    scan.register(app)
    registry.register(app)
    data.register(app)
    poison.register(data.data_app)
    harden.register(app)
    serve.register(app)
    access.register(app)
    audit.register(app, report.register(app))


_register_all()


def main() -> None:
    app()
