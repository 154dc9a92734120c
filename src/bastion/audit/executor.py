"""How the runner's units of work are executed: the seam for process pools and Ray.

An :class:`Executor` maps a function over units and returns the results in the units' order.
Units must not depend on one another; every random choice in a unit comes from
:meth:`bastion.audit.contract.AuditContext.unit_seed`, so results never depend on the
executor. :class:`InProcessExecutor` runs them one after the other in this process.

>>> InProcessExecutor().map(lambda u: u * u, [1, 2, 3])
[1, 4, 9]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar, runtime_checkable

__all__ = ["Executor", "InProcessExecutor"]

T = TypeVar("T")
R = TypeVar("R")


@runtime_checkable
class Executor(Protocol):
    """Runs independent units of work; ``name`` goes into the report's environment."""

    name: str

    def map(self, fn: Callable[[T], R], units: Sequence[T]) -> list[R]: ...


class InProcessExecutor:
    """Each unit in turn, in this process (an exception stops the map and propagates)."""

    name = "in-process"

    def map(self, fn: Callable[[T], R], units: Sequence[T]) -> list[R]:
        return [fn(u) for u in units]
