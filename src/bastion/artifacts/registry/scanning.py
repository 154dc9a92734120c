"""How the registry scans what is pushed: bastion's artifact scanner, imported lazily."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["Scanner", "default_scanner"]

Scanner = Callable[[Path], tuple[str, dict[str, Any]]]
_VERDICT_ORDER = ("unsafe", "error", "clean", "skipped")


def _scan(path: Path) -> tuple[str, dict[str, Any]]:
    """Scan one file with :func:`bastion.artifacts.scan.scan_path` (imported lazily)."""
    try:
        from bastion.artifacts.scan import (  # type: ignore[attr-defined,unused-ignore]
            scan_path,
        )
    except ImportError:
        return "skipped", {"reason": "the scanner bastion.artifacts.scan is not available"}
    try:
        result = scan_path(path)
    except Exception as exc:  # a scanner crash must not pass as clean
        return "error", {"error": repr(exc)}
    verdict = str(getattr(result, "verdict", "error"))
    findings = []
    for f in getattr(result, "findings", ()) or ():
        to_dict = getattr(f, "to_dict", None)
        findings.append(to_dict() if callable(to_dict) else str(f))
    return verdict, {"findings": findings}


def default_scanner(path: Path) -> tuple[str, dict[str, Any]]:
    """Scan a file or every file of a folder; the worst verdict wins (unsafe > error > clean)."""
    if path.is_file():
        verdict, details = _scan(path)
        return verdict, {path.name: {"verdict": verdict, **details}}
    per_file: dict[str, Any] = {}
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        v, d = _scan(f)
        per_file[f.relative_to(path).as_posix()] = {"verdict": v, **d}
    verdicts = {v["verdict"] for v in per_file.values()}
    overall = next((v for v in _VERDICT_ORDER if v in verdicts), "skipped")
    return overall, per_file
