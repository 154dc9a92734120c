"""Fixtures shared by the artifact tests."""

from __future__ import annotations

import pytest
import typer

from bastion.cli import registry as cli_registry


@pytest.fixture
def cli() -> typer.Typer:
    """A ``bastion`` app holding only the registry, signing and encryption commands."""
    app = typer.Typer()

    @app.callback()
    def _root() -> None:  # keep sub-commands as sub-commands
        pass

    cli_registry.register(app)
    return app
