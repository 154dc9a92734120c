"""Units and checks that kill their own worker: the fault tests' ammunition.

Imported by name on workers (the tests put this folder on ``sys.path`` and ``PYTHONPATH``), so
these are module-level and picklable. A marker file says "this already died once".
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any, ClassVar

from bastion.audit.contract import AuditContext, Check, CheckResult, Metric


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def square_or_die_once(marker: str, unit: int) -> int:
    """``unit ** 2``; unit 1 kills its worker the first time (the marker file remembers)."""
    if unit == 1 and not os.path.exists(marker):
        Path(marker).touch()
        _die()
    return unit * unit


def square_or_always_die(unit: int) -> int:
    """``unit ** 2``; unit 1 kills its worker every time."""
    if unit == 1:
        _die()
    return unit * unit


def node_id() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


class _FaultCheck(Check):
    threat = "data_quality"
    practices: ClassVar[tuple[str, ...]] = ("model_validation",)
    needs_model = False
    defaults: ClassVar[dict[str, Any]] = {"marker": ""}

    def ran(self, ctx: AuditContext) -> CheckResult:
        ray = sys.modules.get("ray")
        where = f" on node {node_id()}" if ray is not None and ray.is_initialized() else ""
        return CheckResult("passed", metrics={"rows": Metric(float(len(ctx.test)))},
                           summary=f"survived{where}")


class KillOnceCheck(_FaultCheck):
    """Kills its worker the first time it runs (per marker), then passes."""

    name = "kill-once"
    title = "Kills its worker once"

    def run(self, ctx: AuditContext) -> CheckResult:
        marker = str(ctx.check_settings(self.name)["marker"])
        if not os.path.exists(marker):
            Path(marker).touch()
            _die()
        return self.ran(ctx)


class AlwaysDiesCheck(_FaultCheck):
    """Kills its worker every time."""

    name = "always-dies"
    title = "Kills its worker every time"

    def run(self, ctx: AuditContext) -> CheckResult:
        _die()
        raise AssertionError("unreachable")


FAULT_CHECKS = (KillOnceCheck, AlwaysDiesCheck)
