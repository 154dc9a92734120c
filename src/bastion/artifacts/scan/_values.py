"""Symbolic values of the pickle-machine simulator and the errors it raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: byte strings longer than this are skipped (seek), not kept
KEEP_BYTES = 1 << 20
#: the longest text line (protocol 0 operands) the scanner reads
MAX_LINE = 64 << 20

__all__ = ["KEEP_BYTES", "MARK", "MAX_LINE", "BigBytes", "Global", "Obj", "Opaque", "PDict",
           "PSet", "ParseError", "Stop", "short"]


class _Mark:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MARK"


MARK = _Mark()


@dataclass(eq=False)
class Global:
    module: str
    name: str
    allowed: bool


@dataclass(eq=False)
class Obj:
    """The result of a call (or of instantiating a class)."""

    func: Any
    args: Any
    state: Any = None


@dataclass(eq=False)
class Opaque:
    """A value the scanner does not model (a persistent id, an out-of-band buffer...)."""

    what: str


@dataclass(eq=False)
class BigBytes:
    length: int


@dataclass(eq=False)
class PDict:
    pairs: list[tuple[Any, Any]] = field(default_factory=list)

    def get(self, key: str) -> Any:
        """The value the built dict would hold: the last pair with this key wins."""
        for k, v in reversed(self.pairs):
            if k == key and isinstance(k, str):
                return v
        return None


@dataclass(eq=False)
class PSet:
    items: list[Any] = field(default_factory=list)


class ParseError(Exception):
    """The stream is not a valid pickle at this point."""


class Stop(Exception):
    """The STOP opcode: the pickle is complete."""


def short(v: Any) -> str:
    """A short description of a symbolic value for a finding."""
    if isinstance(v, Global):
        return f"{v.module}.{v.name}"
    if isinstance(v, Obj):
        return f"result of calling {short(v.func)}"
    return type(v).__name__
