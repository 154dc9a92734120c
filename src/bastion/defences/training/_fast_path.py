"""Clipped per-sample gradient sums of Linear/Conv2d Sequential networks, from each layer's
input and output gradient, without ``vmap``.

For a linear layer ``z = a Wᵀ + b`` on a batch of vectors, example ``i``'s weight gradient is
the outer product ``δᵢ aᵢᵀ`` (``δᵢ = ∂lossᵢ/∂zᵢ``), so its squared norm is ``‖aᵢ‖² ‖δᵢ‖²`` and
the bias gradient's is ``‖δᵢ‖²`` (Goodfellow 2015, "Efficient per-example gradient
computations", https://arxiv.org/abs/1510.01799); the clipped sum is ``(c ⊙ δ)ᵀ a`` with
``cᵢ = min(1, C / (‖gᵢ‖ + 1e-6))``, so a linear layer's per-sample gradients are never formed.
A convolution's per-sample weight gradient is ``δᵢ Uᵢᵀ`` with ``Uᵢ`` the unfolded input
patches (Rochette et al. 2019, https://arxiv.org/abs/1912.06015); those are small (out ×
in·k²) and are formed. One forward pass records every layer's input and output, and one
``autograd.grad`` of the summed loss gives every ``δ`` (skipping the weight-gradient
products of an ordinary backward). The numbers are those of clipping materialised gradients.

Only used when the whole network is known to act on each example separately (an
``nn.Sequential`` tree of ``Linear``/``Conv2d`` layers, element-wise activations, pooling,
``Flatten``/``Identity``/``Dropout``), linear layers see 2-d inputs and convolutions are
ungrouped with zero padding; anything else takes the ``vmap`` path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_ROWWISE = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.GELU,
    nn.ELU,
    nn.SiLU,
    nn.Softplus,
    nn.Flatten,
    nn.Identity,
    nn.Dropout,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)


def supported(module: nn.Module) -> bool:
    """Whether ``module`` is a tree of Sequentials over Linear/Conv2d layers and per-example
    operations, with every parameter in one of those layers, no buffers and no layer reused."""
    if any(True for _ in module.buffers()):
        return False
    all_modules = [m for _, m in module.named_modules(remove_duplicate=False)]
    if len({id(m) for m in all_modules}) != len(all_modules):
        return False  # a layer used twice: its hooks would fire twice
    return _tree_ok(module)


def _conv_ok(m: nn.Conv2d) -> bool:
    return m.groups == 1 and m.padding_mode == "zeros" and isinstance(m.padding, tuple)


def _tree_ok(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    if isinstance(module, nn.Conv2d):
        return _conv_ok(module)
    if isinstance(module, nn.Sequential):
        return all(_tree_ok(child) for child in module)
    return isinstance(module, _ROWWISE)


def _conv_grads(
    layer: nn.Conv2d, a: torch.Tensor, d: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample weight gradients ``(b, out, in·kh·kw)`` and bias gradients ``(b, out)``."""
    u = F.unfold(
        a,
        kernel_size=layer.kernel_size,
        dilation=layer.dilation,
        padding=layer.padding,  # type: ignore[arg-type]
        stride=layer.stride,
    )
    dm = d.flatten(2)
    return torch.einsum("bol,bkl->bok", dm, u), dm.sum(2)


def clipped_sum(
    module: nn.Module, x: torch.Tensor, y: torch.Tensor, max_grad_norm: float
) -> tuple[dict[str, torch.Tensor], torch.Tensor] | None:
    """``(summed clipped gradients, per-example norms)``, or ``None`` when a layer saw inputs
    this path does not handle (the caller then falls back to ``vmap``)."""
    layers = [
        (name, m) for name, m in module.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)
    ]
    record: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []
    for name, layer in layers:

        def hook(
            _m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor, key: str = name
        ) -> None:
            record[key] = (inp[0].detach(), out)

        handles.append(layer.register_forward_hook(hook))
    try:
        with torch.enable_grad():
            loss = F.cross_entropy(module(x), y, reduction="sum")
    finally:
        for h in handles:
            h.remove()
    if len(record) != len(layers):
        return None
    for name, layer in layers:
        a, z = record[name]
        want = 4 if isinstance(layer, nn.Conv2d) else 2
        if a.dim() != want or not z.requires_grad:
            return None
    deltas = torch.autograd.grad(loss, [record[name][1] for name, _ in layers])
    sq = torch.zeros(x.shape[0], dtype=loss.dtype, device=loss.device)
    conv: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for (name, layer), d in zip(layers, deltas, strict=True):
        a = record[name][0]
        train_w = layer.weight.requires_grad
        train_b = layer.bias is not None and layer.bias.requires_grad
        if isinstance(layer, nn.Conv2d):
            gw, gb = _conv_grads(layer, a, d)
            conv[name] = (gw, gb)
            if train_w:
                sq = sq + gw.pow(2).sum((1, 2))
            if train_b:
                sq = sq + gb.pow(2).sum(1)
        else:
            d2 = d.pow(2).sum(1)
            if train_w:
                sq = sq + a.pow(2).sum(1) * d2
            if train_b:
                sq = sq + d2
    norms = sq.sqrt()
    factor = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    summed: dict[str, torch.Tensor] = {}
    for (name, layer), d in zip(layers, deltas, strict=True):
        prefix = f"{name}." if name else ""
        if isinstance(layer, nn.Conv2d):
            gw, gb = conv[name]
            w = torch.einsum("b,bok->ok", factor, gw).reshape(layer.weight.shape)
            b = factor @ gb
        else:
            dc = d * factor[:, None]
            w = dc.t() @ record[name][0]
            b = dc.sum(0)
        if layer.weight.requires_grad:
            summed[prefix + "weight"] = w
        if layer.bias is not None and layer.bias.requires_grad:
            summed[prefix + "bias"] = b
    return summed, norms
