"""Clipped per-sample gradient sums of Linear-only Sequential networks without materialising
per-sample gradients.

For a linear layer ``z = a Wᵀ + b`` on a batch of vectors, example ``i``'s weight gradient is
the outer product ``δᵢ aᵢᵀ`` (``δᵢ = ∂lossᵢ/∂zᵢ``), so its squared norm is ``‖aᵢ‖² ‖δᵢ‖²`` and
the bias gradient's is ``‖δᵢ‖²`` (Goodfellow 2015, "Efficient per-example gradient
computations", https://arxiv.org/abs/1510.01799). One forward pass records every layer's input
``a`` and output ``z``, one ``autograd.grad`` of the summed loss gives every ``δ`` (and skips the
weight-gradient products), and the clipped sum is ``(c ⊙ δ)ᵀ a`` per layer with
``cᵢ = min(1, C / (‖gᵢ‖ + 1e-6))`` — the same numbers as clipping materialised gradients, at
about the cost of one ordinary backward pass.

Only used when the whole network is known to be row-wise (an ``nn.Sequential`` tree of
``Linear`` layers, element-wise activations, ``Flatten``/``Identity``/``Dropout``) and every
linear layer sees 2-d inputs; anything else takes the ``vmap`` path.
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
)


def supported(module: nn.Module) -> bool:
    """Whether ``module`` is a tree of Sequentials over Linear layers and row-wise activations,
    with every parameter belonging to a Linear layer and no buffers."""
    if any(True for _ in module.buffers()):
        return False
    all_modules = [m for _, m in module.named_modules(remove_duplicate=False)]
    if len({id(m) for m in all_modules}) != len(all_modules):
        return False  # a layer used twice: its hooks would fire twice
    return _tree_ok(module)


def _tree_ok(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    if isinstance(module, nn.Sequential):
        return all(_tree_ok(child) for child in module)
    return isinstance(module, _ROWWISE)


def clipped_sum(
    module: nn.Module, x: torch.Tensor, y: torch.Tensor, max_grad_norm: float
) -> tuple[dict[str, torch.Tensor], torch.Tensor] | None:
    """``(summed clipped gradients, per-example norms)``, or ``None`` if a linear layer saw a
    non-2-d input (the caller then falls back to ``vmap``)."""
    layers = [(name, m) for name, m in module.named_modules() if isinstance(m, nn.Linear)]
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
    if len(record) != len(layers) or any(
        a.dim() != 2 or not z.requires_grad for a, z in record.values()
    ):
        return None
    outs = [record[name][1] for name, _ in layers]
    deltas = torch.autograd.grad(loss, outs)
    sq = torch.zeros(x.shape[0], dtype=loss.dtype, device=loss.device)
    for (name, layer), d in zip(layers, deltas, strict=True):
        a = record[name][0]
        d2 = d.pow(2).sum(1)
        if layer.weight.requires_grad:
            sq = sq + a.pow(2).sum(1) * d2
        if layer.bias is not None and layer.bias.requires_grad:
            sq = sq + d2
    norms = sq.sqrt()
    factor = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    summed: dict[str, torch.Tensor] = {}
    for (name, layer), d in zip(layers, deltas, strict=True):
        a = record[name][0]
        dc = d * factor[:, None]
        prefix = f"{name}." if name else ""
        if layer.weight.requires_grad:
            summed[prefix + "weight"] = dc.t() @ a
        if layer.bias is not None and layer.bias.requires_grad:
            summed[prefix + "bias"] = dc.sum(0)
    return summed, norms
