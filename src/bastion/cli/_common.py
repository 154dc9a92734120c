"""Helpers shared by the CLI modules: console, error handling, safe writes."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from bastion.errors import BastionError, ConfigurationError

__all__ = [
    "EXECUTOR_HELP",
    "EXIT_ERROR",
    "GPUS_HELP",
    "console",
    "err_console",
    "fail",
    "fmt_value",
    "handle_errors",
    "parse_executor",
    "parse_floats",
    "parse_kv",
    "parse_shape",
]

P = ParamSpec("P")
R = TypeVar("R")

#: exit code for bad input, a bad option or a failed operation
EXIT_ERROR = 2

console = Console()
err_console = Console(stderr=True)
log = logging.getLogger("bastion.cli")


def fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    """Print ``message`` as an error and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn bastion's errors (and unreadable files) into one-line messages and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except BastionError as exc:
            raise fail(cli_spelling(str(exc))) from None
        except OSError as exc:  # missing file, a file where a folder is expected, ...
            raise fail(f"{exc.strerror or exc}: {exc.filename}") from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None

    return wrapper


# Python keyword arguments that library messages name, and the command-line flags that set
# them: a CLI user reads `--layer`, not `layer=`.
_FLAGS = {
    "layer": "--layer", "factory": "--factory", "trust_pickle": "--trust-pickle",
    "num_classes": "--num-classes", "input_shape": "--input-shape", "access": "--access",
    "method": "--method", "bounds": "--bounds",
}  # fmt: skip
_KWARG = re.compile(
    r"\b(?P<name>" + "|".join(_FLAGS) + r")=(?P<value>True|'[^']*'|\.\.\.)?"
    r"(?P<again> \(--[a-z-]+\))?"
)


def cli_spelling(message: str) -> str:
    """``message`` with Python keyword spellings (``layer=``, ``trust_pickle=True``,
    ``factory='pkg.mod:fn'``) replaced by the flags that set them (``--layer``, ...)."""

    def flag(m: re.Match[str]) -> str:
        value = m.group("value")
        if value is None or value == "True":
            return _FLAGS[m.group("name")]
        return f"{_FLAGS[m.group('name')]} {value.strip(chr(39))}"

    return _KWARG.sub(flag, message)


def report_chain(result: Any) -> None:
    """Print a verified audit chain, or exit 1 naming its first bad entry.

    ``result`` is an :class:`~bastion.artifacts.registry.audit.AuditVerification`.
    """
    if not result.ok:
        raise fail(f"audit log does not verify at entry {result.first_bad_seq}: {result.reason}",
                   code=1)
    cp = getattr(result, "checkpoint", None)
    anchor = (f"; anchored by the signed checkpoint of entry {cp.seq} ({cp.at})" if cp
              else "; not anchored by a signed checkpoint")
    typer.echo(f"audit log verified: {result.entries} entries, head {result.head_hash}{anchor}")


def fmt_value(value: Any) -> str:
    """A value for a table cell: floats with at most 6 significant digits (``934.95``, not
    ``934.9499999999999``), lists and tuples as ``[a, b]``, ``None`` as ``—``."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(fmt_value(v) for v in value) + "]"
    return str(value)


def parse_kv(values: list[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` options."""
    out: dict[str, Any] = {}
    for item in values or []:
        if "=" not in item:
            raise BastionError(f"expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def parse_floats(text: str, what: str, count: int | None = None) -> tuple[float, ...]:
    """Parse ``"0,1"``-style options; ``count`` fixes how many numbers are needed."""
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise ConfigurationError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if count is not None and len(values) != count:
        raise ConfigurationError(f"{what} needs {count} comma-separated numbers, got {text!r}")
    return values


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """Parse ``--input-shape`` (``1,28,28`` or ``1x28x28``); ``None`` stays ``None``."""
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in text.replace(" ", "").replace("x", ",").split(",") if v)
    except ValueError:
        raise ConfigurationError(f"--input-shape must look like 1,28,28, got {text!r}") from None
    if not shape or any(s <= 0 for s in shape):
        raise ConfigurationError(f"--input-shape must be positive sizes, got {text!r}")
    return shape


#: ``--executor`` and ``--gpus-per-task`` help, shared by every command that distributes work
EXECUTOR_HELP = ("Where the work runs: in-process (default), processes[:N] (N local processes, "
                 "default every core), ray (the Ray cluster this machine is attached to, else "
                 "a local one) or ray://HOST:10001 (a remote cluster through Ray Client; needs "
                 "pip install 'bastion-ml[ray]').")
GPUS_HELP = "GPUs each Ray task asks for (1, or 0.5 to share one); 0 (default) runs on CPUs."


def parse_executor(spec: str | None, gpus_per_task: float = 0.0) -> Any:
    """The :class:`~bastion.audit.executor.Executor` of ``--executor`` (and a checked
    ``--gpus-per-task``, which only Ray can honour).

    >>> parse_executor("processes:3").name
    'process-pool[3]'
    >>> parse_executor(None, 1.0)
    Traceback (most recent call last):
    ...
    bastion.errors.ConfigurationError: --gpus-per-task needs --executor ray or ray://host:port
    """
    from bastion.audit.executor import make_executor

    if not gpus_per_task >= 0:
        raise ConfigurationError(f"--gpus-per-task must be >= 0, got {gpus_per_task}")
    text = (spec or "in-process").strip()
    if gpus_per_task > 0 and not text.startswith("ray"):
        raise ConfigurationError("--gpus-per-task needs --executor ray or ray://host:port")
    return make_executor(text)
