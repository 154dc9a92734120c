"""Keep gradients channels-last on the way back through ``nn.Flatten``.

A channels-last activation flattened for the dense head is copied to the NCHW order in the
forward pass, so the gradient that comes back out of ``Flatten`` is NCHW-contiguous. The
layers behind it (max-pool, ReLU, convolution backward) then run their slow mixed-layout
kernels on every backward pass: on CPU a channels-last max-pool backward fed an NCHW gradient
takes about 5× as long as with a channels-last one, and the ReLU backward that follows 10×.
The identity below, put in front of each ``Flatten`` while the model runs channels-last,
hands its gradient back in the channels-last layout (one small copy of the pooled map), so the
whole backward stays in one layout. The forward values and the gradients' values are
unchanged; only their memory layout differs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["channels_last_gradients"]


class _ChannelsLastGrad(torch.autograd.Function):
    """Identity forward; the backward returns the gradient in the channels-last layout."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=torch.channels_last)


def _pre_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    if len(args) != 1 or not isinstance(args[0], torch.Tensor):
        return None
    x = args[0]
    if (
        x.dim() != 4
        or not x.requires_grad
        or x.is_contiguous()  # NCHW already (or 1×1 maps, where both layouts agree)
        or not x.is_contiguous(memory_format=torch.channels_last)
    ):
        return None
    return (_ChannelsLastGrad.apply(x),)


def channels_last_gradients(module: nn.Module) -> list[RemovableHandle]:
    """Install the identity in front of every ``nn.Flatten`` of ``module``; returns the hook
    handles (call ``.remove()`` on each to undo)."""
    return [
        m.register_forward_pre_hook(_pre_hook)
        for m in module.modules()
        if isinstance(m, nn.Flatten)
    ]
