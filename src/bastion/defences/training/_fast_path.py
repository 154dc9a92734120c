"""Clipped per-sample gradient sums of Linear/Conv2d Sequential networks, from each layer's
input and output gradient, without ``vmap`` and in one backward pass.

For a linear layer ``z = a Wᵀ + b`` on a batch of vectors, example ``i``'s weight gradient is
the outer product ``δᵢ aᵢᵀ`` (``δᵢ = ∂lossᵢ/∂zᵢ``), so its squared norm is ``‖aᵢ‖² ‖δᵢ‖²`` and
the bias gradient's is ``‖δᵢ‖²`` (Goodfellow 2015, "Efficient per-example gradient
computations", https://arxiv.org/abs/1510.01799); the clipped sum is ``(c ⊙ δ)ᵀ a`` with
``cᵢ = min(1, C / (‖gᵢ‖ + 1e-6))``, so a linear layer's per-sample gradients are never formed.

A convolution's per-sample weight gradient ``δᵢ Uᵢᵀ`` (``Uᵢ`` the input patches, Rochette et
al. 2019, https://arxiv.org/abs/1912.06015) is small (out × in·k²) and is formed: for these
layers it is far cheaper than the ghost norm (Bu et al. 2022, "mixed ghost clipping",
https://arxiv.org/abs/2205.10683: ``T²(d+p)`` against ``T·d·p`` per example, with ``T`` the
output positions). For stride-1 convolutions the patches are never unfolded element by
element: with the input zero-padded once and ``δ`` padded to the same row width, each kernel
offset is a contiguous window of the flattened padded input, so the patch matrix of a few
examples at a time (a cache-sized chunk) is a strided view copied in long runs, followed by one
batched matrix product. Other strides unfold the input in the same chunks.

One forward pass walks the Sequential tree (no hooks) and keeps every trainable layer's input
and output; one ``autograd.grad`` of the summed loss gives every ``δ`` (the weight-gradient
products of an ordinary backward are skipped), and the clipped sums are added straight into the
caller's (noise-filled) gradient buffers (book-keeping, Bu et al. 2022,
https://arxiv.org/abs/2210.00038). The numbers are those of clipping materialised gradients.

Only used when the whole network is known to act on each example separately (an
``nn.Sequential`` tree of ``Linear``/``Conv2d`` layers, element-wise activations, pooling,
``Flatten``/``Identity``/``Dropout``), linear layers see 2-d inputs and convolutions are
ungrouped with zero padding; anything else takes the ``vmap`` path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

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

# Patch-matrix floats per chunk of examples (2 MiB of float32): keeps the copy in cache.
_CHUNK_FLOATS = 1 << 19

_Leaf = tuple[str, nn.Module]


def supported(module: nn.Module) -> bool:
    """Whether ``module`` is a tree of Sequentials over Linear/Conv2d layers and per-example
    operations, with every parameter in one of those layers, no buffers and no layer reused."""
    return _plan(module) is not None


def _plan(module: nn.Module) -> list[_Leaf] | None:
    """The leaf modules in execution order with their parameter prefixes, or ``None``."""
    if any(True for _ in module.buffers()):
        return None
    all_modules = [m for _, m in module.named_modules(remove_duplicate=False)]
    if len({id(m) for m in all_modules}) != len(all_modules):
        return None  # a layer used twice
    leaves: list[_Leaf] = []
    return leaves if _walk(module, "", leaves) else None


def _layer_ok(m: nn.Module) -> bool:
    if parametrize.is_parametrized(m) or any(True for _ in m.children()):
        return False
    if {n for n, _ in m.named_parameters()} - {"weight", "bias"}:
        return False
    if isinstance(m, nn.Conv2d):
        return (
            type(m).forward is nn.Conv2d.forward
            and m.groups == 1
            and m.padding_mode == "zeros"
            and isinstance(m.padding, tuple)
        )
    return type(m).forward is nn.Linear.forward


def _walk(module: nn.Module, prefix: str, out: list[_Leaf]) -> bool:
    if isinstance(module, nn.Linear | nn.Conv2d):
        out.append((prefix, module))
        return _layer_ok(module)
    if isinstance(module, nn.Sequential):
        if type(module).forward is not nn.Sequential.forward:
            return False
        return all(_walk(child, f"{prefix}{name}.", out) for name, child in module.named_children())
    if isinstance(module, _ROWWISE) and not any(True for _ in module.parameters()):
        out.append((prefix, module))
        return True
    return False


def _trainable(m: nn.Module) -> bool:
    return any(p.requires_grad for p in m.parameters())


def conv_per_sample_grads(layer: nn.Conv2d, a: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Per-sample weight gradients ``(b, out, in·kh·kw)`` of ``layer`` from its input ``a``
    ``(b, in, h, w)`` and output gradient ``d`` ``(b, out, h', w')``."""
    b, c, h, w = a.shape
    o, ho, wo = d.shape[1], d.shape[2], d.shape[3]
    kh, kw = layer.kernel_size
    k = c * kh * kw
    out = torch.empty(b, o, k, dtype=d.dtype, device=d.device)
    if tuple(layer.stride) == (1, 1):
        ph, pw = (int(v) for v in layer.padding)
        dh, dw = layer.dilation
        hp, wp = h + 2 * ph, w + 2 * pw
        span = ho * wp  # δ padded to the padded input's row width, flattened
        size = hp * wp + dw * (kw - 1)  # room for the last window's overrun
        step = min(b, max(1, _CHUNK_FLOATS // (k * span)))
        # Chunk buffers, reused: the zero borders stay zero, only the interiors are rewritten.
        ap = a.new_zeros(step, c, size)
        dp = d.new_zeros(step, o, ho, wp)
        patches = d.new_empty(step, k, span)
        for i in range(0, b, step):
            n = min(step, b - i)
            ap[:n, :, : hp * wp].view(n, c, hp, wp)[:, :, ph : ph + h, pw : pw + w] = a[i : i + n]
            dp[:n, :, :, :wo] = d[i : i + n]
            windows = ap[:n].as_strided((n, c, kh, kw, span), (c * size, size, dh * wp, dw, 1))
            patches[:n].view(n, c, kh, kw, span).copy_(windows)
            torch.bmm(dp[:n].view(n, o, span), patches[:n].transpose(1, 2), out=out[i : i + n])
        return out
    dm = d.flatten(2)
    step = max(1, _CHUNK_FLOATS // (k * dm.shape[2]))
    for i in range(0, b, step):
        u = F.unfold(
            a[i : i + step],
            kernel_size=layer.kernel_size,
            dilation=layer.dilation,
            padding=layer.padding,  # type: ignore[arg-type]
            stride=layer.stride,
        )
        torch.bmm(dm[i : i + step], u.transpose(1, 2), out=out[i : i + step])
    return out


def accumulate(
    module: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    max_grad_norm: float,
    out: dict[str, torch.Tensor],
    scale: float = 1.0,
) -> torch.Tensor | None:
    """Add ``scale ×`` the clipped per-sample gradient sum of every trainable parameter into
    ``out[name]`` (contiguous, parameter-shaped) and return the per-example norms ``(b,)``;
    ``None`` (``out`` untouched) when the module or a layer's input is not handled here."""
    leaves = _plan(module)
    if leaves is None:
        return None
    taps: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []
    h = x
    with torch.enable_grad():
        for name, m in leaves:
            if isinstance(m, nn.Linear | nn.Conv2d) and _trainable(m):
                if h.dim() != (4 if isinstance(m, nn.Conv2d) else 2):
                    return None
                z = m(h)
                taps.append((name, m, h.detach(), z))
                h = z
            else:
                h = m(h)
        if h.dim() != 2:
            return None
        loss = F.cross_entropy(h, y, reduction="sum")
    sq = torch.zeros(x.shape[0], dtype=h.dtype, device=h.device)
    if not taps:
        return sq
    deltas = torch.autograd.grad(loss, [t[3] for t in taps])
    conv: list[tuple[torch.Tensor | None, torch.Tensor]] = []
    for (_, m, a, _), d in zip(taps, deltas, strict=True):
        train_w = m.weight.requires_grad
        train_b = m.bias is not None and m.bias.requires_grad
        if isinstance(m, nn.Conv2d):
            gw = conv_per_sample_grads(m, a, d) if train_w else None
            gb = d.sum((2, 3))
            conv.append((gw, gb))
            if gw is not None:
                sq.add_(torch.linalg.vector_norm(gw.flatten(1), dim=1).square_())
            if train_b:
                sq.add_(gb.square().sum(1))
        else:
            d2 = d.square().sum(1)
            if train_w:  # ‖a‖² without a temporary the size of the input
                sq.addcmul_(torch.linalg.vector_norm(a, dim=1).square_(), d2)
            if train_b:
                sq.add_(d2)
    norms = sq.sqrt_()
    factor = (max_grad_norm / (norms + 1e-6)).clamp_(max=1.0)
    weights = factor * scale
    convs = iter(conv)
    for (name, m, a, _), d in zip(taps, deltas, strict=True):
        w_out = out.get(name + "weight") if m.weight.requires_grad else None
        b_out = out.get(name + "bias") if m.bias is not None and m.bias.requires_grad else None
        if isinstance(m, nn.Conv2d):
            gw, gb = next(convs)
            if w_out is not None and gw is not None:
                w_out.view(-1).addmv_(gw.flatten(1).t(), weights)
            if b_out is not None:
                b_out.addmv_(gb.t(), weights)
        else:
            if w_out is not None:
                w_out.addmm_((d * weights[:, None]).t(), a)
            if b_out is not None:
                b_out.addmv_(d.t(), weights)
    return norms
