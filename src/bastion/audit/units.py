"""Mapping a check's own units of work (evasion shards, reference models) over an executor.

:func:`map_units` hands the units to the executor when what they share can travel to workers,
and otherwise runs them here: a TorchScript model or a custom ``train_fn`` closure cannot be
pickled, and the units give the same results wherever they run, so only the speed differs.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["map_units"]

log = logging.getLogger(__name__)


def map_units(
    executor: Any, fn: Callable[[Any, Any], Any], units: Sequence[Any], shared: Any
) -> list[Any]:
    """``executor.map(fn, units, shared=shared)`` (default in-process), or in this process
    when ``shared`` cannot be pickled for the executor's workers.

    >>> map_units(None, lambda s, u: s + u, [1, 2], 10)
    [11, 12]
    """
    from bastion.audit.executor import InProcessExecutor

    here = InProcessExecutor()
    if executor is None or isinstance(executor, InProcessExecutor) or len(units) < 2:
        return here.map(fn, units, shared=shared)
    try:
        pickle.dumps(shared, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # TorchScript modules, closures, open sessions
        log.info(
            "running %d unit(s) of %s in this process: their inputs cannot be sent to %s "
            "workers (%s: %s)",
            len(units),
            getattr(fn, "__name__", fn),
            executor.name,
            type(exc).__name__,
            exc,
        )
        return here.map(fn, units, shared=shared)
    return executor.map(fn, units, shared=shared)
