"""The one progress-bar layout of bastion (rich): description, bar, count, elapsed time."""

from __future__ import annotations

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["progress_bar"]


def progress_bar(enabled: bool) -> Progress:
    """A transient bar (it disappears when done); ``enabled=False`` draws nothing."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        transient=True,
        disable=not enabled,
    )
