"""The audit's plan: which checks run, and for each one that does not, why and what enables it.

The plan follows from the model's capabilities, the data given and the threat model: a check
whose :meth:`~bastion.audit.contract.Check.requires` names a missing input, a check that needs
a model when none could be loaded, and a check the configuration skipped all appear as
``not_run`` with a reason; nothing is left out silently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bastion.audit.contract import AuditContext, Check, Requirement
from bastion.errors import ConfigurationError

__all__ = ["PlanEntry", "check_selection", "effective_access", "make_plan", "need_data"]


@dataclass(frozen=True)
class PlanEntry:
    """One line of the plan (the report's ``plan`` array)."""

    check: str
    will_run: bool
    reason: str | None = None
    enable: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "will_run": self.will_run, "reason": self.reason,
                "enable": self.enable}


def effective_access(ctx: AuditContext) -> str:
    """What the attacker gets: the threat model's access, limited by the model's capabilities
    (``white-box``, ``scores`` or ``labels``; ``none`` without a model)."""
    from bastion.models.base import Capability

    if ctx.model is None:
        return "none"
    caps = ctx.model.capabilities
    if Capability.GRADIENTS in caps:
        have = "white-box"
    elif Capability.SCORES in caps:
        have = "scores"
    else:
        have = "labels"
    order = ("labels", "scores", "white-box")
    wanted = str(getattr(getattr(ctx.threat, "access", None), "value", "white-box"))
    return order[min(order.index(have), order.index(wanted))]


def need_data(ctx: AuditContext, role: str, why: str) -> Requirement | None:
    """``not_run`` unless the ``train``/``test`` set is given: "needs --train (why)"."""
    if getattr(ctx, role) is None:
        return Requirement(f"needs --{role} ({why})", f"pass --{role} {role}.npz")
    return None


def check_selection(
    catalogue: Mapping[str, type[Check]], only: Sequence[str], skip: Sequence[str],
    settings: Mapping[str, Mapping[str, Any]],
) -> None:
    """Refuse check names and setting keys the catalogue does not know."""
    known = ", ".join(catalogue)
    for where, names in (("checks.only", only), ("checks.skip", skip), ("checks", settings)):
        unknown = sorted(set(names) - set(catalogue))
        if unknown:
            raise ConfigurationError(
                f"unknown check {', '.join(map(repr, unknown))} in {where}; the checks are {known}"
            )
    for name, values in settings.items():
        allowed = catalogue[name].defaults
        extra = sorted(set(values) - set(allowed))
        if extra:
            raise ConfigurationError(
                f"unknown setting {', '.join(map(repr, extra))} for check {name!r}; allowed: "
                f"{', '.join(allowed) or 'none'}"
            )


def make_plan(
    checks: Sequence[Check], ctx: AuditContext, *, only: Sequence[str] = (),
    skip: Sequence[str] = (), model_unavailable: str | None = None,
) -> list[PlanEntry]:
    """One :class:`PlanEntry` per check, in the order given."""
    plan: list[PlanEntry] = []
    for check in checks:
        name = check.name
        if only and name not in only:
            plan.append(PlanEntry(name, False, "not selected (checks.only / --checks)",
                                  f"add {name} to --checks"))
        elif name in skip:
            plan.append(PlanEntry(name, False, "skipped by the configuration (checks.skip / "
                                  "--skip)", f"remove {name} from --skip"))
        elif check.needs_model and ctx.model is None:
            plan.append(PlanEntry(name, False, model_unavailable or "needs a model (--model)",
                                  "pass a model that loads (--model)" if model_unavailable is None
                                  else "fix the model file, or pass --trust-pickle if you trust "
                                  "its source"))
        else:
            req = check.requires(ctx)
            if req is None:
                plan.append(PlanEntry(name, True))
            else:
                plan.append(PlanEntry(name, False, req.reason, req.enable))
    return plan
