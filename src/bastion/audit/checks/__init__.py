"""The checks of the catalogue, one module each; importing this package registers them all.

Adding a check is one file here: a :class:`~bastion.audit.contract.Check` subclass decorated
with :func:`~bastion.audit.contract.register`. Modules are imported in name order; the
catalogue's order (the order audits run and reports show them) is :data:`ORDER` first, then
any other check in the order it registered.
"""

from __future__ import annotations

import importlib
import pkgutil

from bastion.audit.contract import CATALOGUE, Check

__all__ = ["ORDER", "load_catalogue"]

#: the order of the known checks: cheap, model-free ones first
ORDER = ("artifact", "data", "evasion", "extraction", "membership", "inversion", "poisoning")


def load_catalogue() -> dict[str, type[Check]]:
    """Import every check module and return the catalogue in :data:`ORDER`."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    ordered = {name: CATALOGUE[name] for name in ORDER if name in CATALOGUE}
    ordered.update({k: v for k, v in CATALOGUE.items() if k not in ordered})
    return ordered
