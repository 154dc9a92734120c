"""``bastion evaluate ...`` (work in progress)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    evaluate_app = typer.Typer(help="Evaluate a model against attacks.", no_args_is_help=True)
    app.add_typer(evaluate_app, name="evaluate")
