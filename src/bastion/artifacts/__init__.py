"""Model and data artifacts: static scanning and safe loading.

Exports are imported lazily so that ``import bastion.artifacts`` stays cheap; signing,
encryption and the registry live in their own submodules.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["load", "scan_path", "scan_paths"]

_LAZY = {
    "scan_path": "bastion.artifacts.scan",
    "scan_paths": "bastion.artifacts.scan",
    "load": "bastion.artifacts.loading",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bastion.artifacts' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
