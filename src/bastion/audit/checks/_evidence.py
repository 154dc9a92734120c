"""Small helpers the confidentiality and data-integrity checks share: settings with defaults,
the attacker's effective access, data requirements, and the data of image plots."""

from __future__ import annotations

import math
from typing import Any

import torch

from bastion.audit.contract import AuditContext, Check, Requirement

__all__ = [
    "attacker_access",
    "check_settings",
    "image_pixels",
    "is_image_shape",
    "missing_data",
]

#: decimals kept for each pixel of an image plot (enough for a picture, small in JSON)
_PIXEL_DECIMALS = 3


def check_settings(check: Check, ctx: AuditContext) -> dict[str, Any]:
    """The check's ``defaults`` overridden by the audit's settings for it."""
    return {**dict(getattr(check, "defaults", {})), **dict(ctx.check_settings(check.name))}


def attacker_access(ctx: AuditContext) -> str:
    """``white-box``, ``scores`` or ``labels``: the threat model's access, limited by what the
    model offers (``none`` without a model)."""
    from bastion.models.base import Capability

    if ctx.model is None:
        return "none"
    caps = ctx.model.capabilities
    have = (
        "white-box"
        if Capability.GRADIENTS in caps
        else "scores"
        if Capability.SCORES in caps
        else "labels"
    )
    order = ("labels", "scores", "white-box")
    access = getattr(ctx.threat, "access", None)
    wanted = str(getattr(access, "value", access or "white-box"))
    if wanted not in order:
        wanted = "white-box"
    return order[min(order.index(have), order.index(wanted))]


def missing_data(ctx: AuditContext, role: str, why: str) -> Requirement | None:
    """``not_run`` unless the ``train``/``test`` set is given: "needs --train (why)"."""
    if getattr(ctx, role) is None:
        return Requirement(f"needs --{role} ({why})", f"pass --{role} {role}.npz")
    return None


def is_image_shape(shape: tuple[int, ...]) -> bool:
    """``(C, H, W)`` with one or three channels and sides of at least 8 pixels."""
    return len(shape) == 3 and shape[0] in (1, 3) and min(shape[1:]) >= 8


def image_pixels(x: torch.Tensor, bounds: tuple[float, float]) -> list[Any]:
    """One image ``(C, H, W)`` as nested lists in [0, 1] (``H x W`` for one channel)."""
    lo, hi = float(bounds[0]), float(bounds[1])
    span = hi - lo if math.isfinite(hi - lo) and hi > lo else 1.0
    a = ((x.detach().double().cpu() - lo) / span).clamp(0.0, 1.0)
    if a.dim() == 3 and a.shape[0] == 1:
        a = a[0]
    scale = 10**_PIXEL_DECIMALS
    out: list[Any] = (torch.round(a * scale) / scale).tolist()
    return out
