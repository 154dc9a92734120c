"""Activations of any named layer of a torch classifier.

In general through a forward hook that stops the pass at the layer. When the layer is a direct
child of a plain ``nn.Sequential`` whose leading modules are convolutions, ReLUs and max-pools
(the common small CNN), the prefix of the network up to the layer runs instead with its
convolutional part in oneDNN's blocked memory layout (:class:`_OneDnnPrefix`): the same
operations in the same order on the same weights, about twice as fast on a CPU, because the
max-pool and the layout conversions between convolutions, not the convolutions, dominate the
time of a plain NCHW pass there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bastion.errors import ConfigurationError, InputError
from bastion.models.torch_model import TorchClassifier

__all__ = ["as_module", "default_layer", "extract_activations", "penultimate_layer"]

# Parameter-free element-wise modules that may sit between the penultimate layer and the last
# linear layer; the default representation is taken *before* them.
_ELEMENTWISE = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.ReLU6,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Dropout,
    nn.Identity,
)


# Input values per batch on the oneDNN path (32 MNIST images): measured steadier and faster
# than batches of 128 MNIST images (the intermediate maps stay in cache and below the
# allocator's mmap threshold); smaller inputs go in larger batches, up to ``batch_size``.
# Results are the same for any batch size.
_ONEDNN_VALUES = 32 * 28 * 28


class _OneDnnPrefix:
    """The children ``kids`` of an ``nn.Sequential``, run with their leading convolution /
    ReLU / max-pool segment in oneDNN layout and the rest (from the first other module, e.g.
    ``Flatten``) as usual on dense tensors. The model must be in eval mode.

    A ReLU directly followed by a max-pool runs after it (``max`` and ``relu`` commute exactly,
    and the pool has a quarter of the elements). Results equal the plain pass up to float
    rounding (the convolutions are oneDNN's in both cases).
    """

    def __init__(self, ops: list[tuple[str, Any]], rest: list[nn.Module]) -> None:
        self._ops = ops
        self._rest = rest

    @classmethod
    def build(cls, kids: list[nn.Module]) -> _OneDnnPrefix | None:
        ops: list[tuple[str, Any]] = []
        done = 0  # children handled in oneDNN layout
        for m in kids:
            if type(m) is nn.Conv2d and _plain_conv(m):
                ops.append(("conv", m))
            elif type(m) is nn.ReLU:
                ops.append(("relu", None))
            elif (
                type(m) is nn.MaxPool2d
                and not m.ceil_mode
                and not m.return_indices
                and m.dilation in (1, (1, 1))
            ):
                ops.append(("pool", m))
            elif type(m) not in (nn.Dropout, nn.Identity):  # identities in eval mode
                break
            done += 1
        if not any(kind == "conv" for kind, _ in ops):
            return None
        for j in range(len(ops) - 1):  # relu, pool -> pool, relu
            if ops[j][0] == "relu" and ops[j + 1][0] == "pool":
                ops[j], ops[j + 1] = ops[j + 1], ops[j]
        return cls(ops, kids[done:])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h = x.contiguous().to_mkldnn()
        for kind, m in self._ops:
            if kind == "conv":
                h = torch.mkldnn_convolution(
                    h, m.weight, m.bias, m.padding, m.stride, m.dilation, m.groups
                )
            elif kind == "relu":
                h = torch.relu(h)
            else:
                h = nn.functional.max_pool2d(h, m.kernel_size, m.stride, m.padding)
        out = h.to_dense()
        for m in self._rest:
            out = m(out)
        return out


def _plain_conv(m: nn.Conv2d) -> bool:
    return (
        m.padding_mode == "zeros"
        and not isinstance(m.padding, str)
        and m.weight.dtype == torch.float32
        and m.weight.device.type == "cpu"
    )


def _has_hooks(modules: list[nn.Module]) -> bool:
    return any(
        getattr(m, "_forward_hooks", None) or getattr(m, "_forward_pre_hooks", None)
        for m in modules
    )


def _fast_prefix(
    model: nn.Module | Any, module: nn.Module, name: str, take_input: bool, x: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The oneDNN prefix runner for ``name`` when it applies (see the module docstring).

    ``model`` is the module itself, or a :class:`~bastion.models.TorchClassifier` without
    input preprocessing (one with preprocessing goes through its ``logits`` and the hook).
    """
    if model is not module and not (
        isinstance(model, TorchClassifier)
        and model._mean is None
        and model._std is None
        and tuple(x.shape[1:]) == tuple(model.input_shape)
    ):
        return None
    if (
        type(module) is not nn.Sequential
        or x.dtype != torch.float32
        or x.device.type != "cpu"
        or not torch.backends.mkldnn.is_available()
        or not torch.backends.mkldnn.enabled
    ):
        return None
    names = [n for n, _ in module.named_children()]
    kids = list(module)
    if name not in names or len(names) != len(kids):  # a child reused twice: use the hook
        return None
    prefix = kids[: names.index(name) + (0 if take_input else 1)]
    if _has_hooks([module, *prefix]):
        return None
    return _OneDnnPrefix.build(prefix)


def _script_prefix(
    model: nn.Module | Any, module: nn.Module, name: str, take_input: bool
) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """For a TorchScript model (which runs no hooks): a runner of its top-level layers up to
    ``name``, when the model is a scripted ``nn.Sequential`` and ``name`` one of its layers."""
    names = [n for n, _ in module.named_children()]
    if _kind(module) != "Sequential" or name not in names:
        raise ConfigurationError(
            f"a TorchScript model runs no hooks, so activations can be taken only at the "
            f"top-level layers of a scripted nn.Sequential ({', '.join(names) or 'none'}); "
            f"layer {name!r} is not one of them: save the weights as a state dict and load "
            "them with a factory (--factory module:function) to analyse any layer"
        )
    kids = [m for _, m in module.named_children()]
    prefix = kids[: names.index(name) + (0 if take_input else 1)]
    mean = getattr(model, "_mean", None)
    std = getattr(model, "_std", None)

    def run(x: torch.Tensor, batch_size: int) -> torch.Tensor:
        was_training = module.training
        module.eval()
        try:
            device = next(module.parameters()).device
            parts = []
            for i in range(0, x.shape[0], batch_size):
                h = x[i : i + batch_size].to(device)
                if mean is not None and std is not None:
                    h = (h - mean.to(device)) / std.to(device)
                for layer in prefix:
                    h = layer(h)
                parts.append(h.detach().flatten(1).float().cpu())
        finally:
            module.train(was_training)
        return torch.cat(parts)

    return run


class _StopForward(Exception):
    """Raised by the hook once the wanted activations are captured, to skip the rest."""


def as_module(model: nn.Module | Any) -> tuple[nn.Module, Any]:
    """``(module, forward)``: the hookable module and the callable that runs a batch.

    A bastion :class:`~bastion.models.TorchClassifier` runs through its ``logits`` (so its
    preprocessing applies, without counting queries); a bare ``nn.Module`` is called directly.
    """
    if isinstance(model, nn.Module):
        return model, model
    module = getattr(model, "module", None)
    if isinstance(module, nn.Module) and hasattr(model, "logits"):

        def forward(x: torch.Tensor) -> torch.Tensor:
            cm = getattr(model, "unmetered", None)
            if cm is None:
                return model.logits(x)
            with cm():
                return model.logits(x)

        return module, forward
    raise ConfigurationError(
        f"activation-based detection needs a torch model (nn.Module or TorchClassifier), got "
        f"{type(model).__name__}; use confident learning for other models"
    )


def _kind(sub: nn.Module) -> str:
    """The class name of a layer, also for a TorchScript submodule (its ``original_name``)."""
    if isinstance(sub, torch.jit.ScriptModule):
        return str(getattr(sub, "original_name", type(sub).__name__))
    return type(sub).__name__


def penultimate_layer(module: nn.Module) -> str:
    """Name of the last ``nn.Linear`` layer: its *input* is the penultimate representation."""
    last = None
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear) or _kind(sub) == "Linear":
            last = name
    if last is None:
        raise ConfigurationError(
            "the model has no nn.Linear layer to take the penultimate activations from; "
            "name a layer (--layer, or the layer setting of an audit; one of: "
            f"{', '.join(n for n, _ in module.named_modules() if n) or 'none'})"
        )
    return last


def default_layer(module: nn.Module) -> str:
    """The layer whose *input* is the default representation: the penultimate activations,
    before any parameter-free activation function (ReLU, GELU, dropout, ...) that directly
    precedes the last ``nn.Linear`` layer (in registration order).

    Pre-activation values keep the negative side that a ReLU zeroes, which is where a
    backdoor's signature is often most visible; without such a module it is the last linear
    layer itself. An activation *instance* reused earlier in the network would be hooked at its
    first call: give the head its own module, or name a layer explicitly.
    """
    last = penultimate_layer(module)
    leaves = [(n, m) for n, m in module.named_modules() if n and not list(m.children())]
    names = [n for n, _ in leaves]
    if last not in names:
        return last
    i = names.index(last)
    chosen = last
    elementwise = {cls.__name__ for cls in _ELEMENTWISE}
    while i > 0 and (
        isinstance(leaves[i - 1][1], _ELEMENTWISE) or _kind(leaves[i - 1][1]) in elementwise
    ):
        i -= 1
        chosen = leaves[i][0]
    return chosen


@torch.no_grad()
def extract_activations(
    model: nn.Module | Any,
    x: torch.Tensor,
    *,
    layer: str | None = None,
    batch_size: int = 128,
) -> torch.Tensor:
    """Flattened activations ``(n, d)`` of ``layer``'s output (CPU, float32).

    With ``layer=None`` the penultimate activations are taken: the input of the last linear
    layer, before the activation function that feeds it (see :func:`default_layer`). The
    model's train/eval mode is restored afterwards.

    Example
    -------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    >>> extract_activations(net, torch.rand(5, 4)).shape
    torch.Size([5, 6])
    >>> extract_activations(net, torch.rand(5, 4), layer="1").shape
    torch.Size([5, 6])
    >>> bool((extract_activations(net, torch.rand(5, 4)) < 0).any())  # before the ReLU
    True
    """
    module, forward = as_module(model)
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] == 0:
        raise InputError("x must be a non-empty batch tensor (n, ...)")
    modules = dict(module.named_modules())
    take_input = layer is None
    name = default_layer(module) if layer is None else layer
    if name not in modules:
        raise ConfigurationError(
            f"the model has no layer named {name!r}; its layers are: "
            f"{', '.join(n for n in modules if n)}"
        )
    if isinstance(module, torch.jit.ScriptModule):  # runs no hooks: run its layers in turn
        return _script_prefix(model, module, name, take_input)(x, batch_size)
    fast = _fast_prefix(model, module, name, take_input, x)
    if fast is not None:
        was_training = module.training
        module.eval()
        step = max(1, min(batch_size, _ONEDNN_VALUES // max(1, x[0].numel())))
        try:
            parts = [fast(x[i : i + step]).flatten(1).float() for i in range(0, x.shape[0], step)]
        finally:
            module.train(was_training)
        return torch.cat(parts)
    captured: list[torch.Tensor] = []

    def keep(value: Any) -> None:
        if not isinstance(value, torch.Tensor):
            raise ConfigurationError(f"layer {name!r} does not produce a tensor")
        captured.append(value.detach().flatten(1).float().cpu())
        raise _StopForward  # the layers after this one are not needed

    def pre_hook(_m: nn.Module, inputs: tuple[Any, ...]) -> None:
        keep(inputs[0])

    def hook(_m: nn.Module, _inputs: tuple[Any, ...], output: Any) -> None:
        keep(output)

    target = modules[name]
    handle = (
        target.register_forward_pre_hook(pre_hook)
        if take_input
        else target.register_forward_hook(hook)
    )
    was_training = module.training
    module.eval()
    try:
        device = next(module.parameters()).device
        for i in range(0, x.shape[0], batch_size):
            try:
                forward(x[i : i + batch_size].to(device))
            except _StopForward:
                continue
    finally:
        handle.remove()
        module.train(was_training)
    if not captured:
        raise ConfigurationError(
            f"layer {name!r} was never called during the forward pass (a TorchScript model "
            "does not run hooks): load the weights as a state dict with a factory instead"
        )
    return torch.cat(captured)
