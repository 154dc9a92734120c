"""Small helpers the confidentiality and data-integrity checks share: settings with defaults,
findings without timings, and the data of image plots (the attacker's access and the data
requirements come from :mod:`bastion.audit.plan`)."""

from __future__ import annotations

import math
from typing import Any

import torch

from bastion.audit.contract import AuditContext, Check

__all__ = [
    "check_settings",
    "image_pixels",
    "is_image_shape",
    "without_timings",
]

#: decimals kept for each pixel of an image plot (enough for a picture, small in JSON)
_PIXEL_DECIMALS = 3


def check_settings(check: Check, ctx: AuditContext) -> dict[str, Any]:
    """The check's ``defaults`` overridden by the audit's settings for it."""
    return {**dict(getattr(check, "defaults", {})), **dict(ctx.check_settings(check.name))}


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


def without_timings(finding: Any) -> Any:
    """``finding`` without the timings an attack's summary puts in its evidence: the same
    inputs and seed must give the same document."""
    from dataclasses import replace

    return replace(finding, evidence={k: v for k, v in finding.evidence.items() if k != "seconds"})
