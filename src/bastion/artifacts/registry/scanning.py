"""How the registry scans what is pushed: bastion's artifact scanner, imported lazily."""

from __future__ import annotations

import enum
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["Scanner", "default_scanner"]

#: ``path -> (verdict, details)`` with verdict in {"clean", "unsafe", "error", "skipped"}
Scanner = Callable[[Path], tuple[str, dict[str, Any]]]


def _scan(path: Path) -> tuple[str, dict[str, Any]]:
    """Scan a file or folder with :func:`bastion.artifacts.scan.scan_path`."""
    try:
        from bastion.artifacts.scan import scan_path
    except ImportError:
        return "skipped", {"reason": "the scanner bastion.artifacts.scan is not available"}
    try:
        result = scan_path(path)
    except Exception as exc:  # a scanner crash must never pass as clean
        return "error", {"error": repr(exc)}
    raw: Any = getattr(result, "verdict", "error")
    verdict = str(raw.value if isinstance(raw, enum.Enum) else raw)
    to_dict = getattr(result, "to_dict", None)
    details = to_dict() if callable(to_dict) else {"findings": [
        str(f) for f in getattr(result, "findings", ()) or ()]}
    return verdict, dict(details)


def default_scanner(path: Path) -> tuple[str, dict[str, Any]]:
    """Scan a model file or folder; a folder's verdict is the scanner's combined verdict."""
    return _scan(Path(path))
