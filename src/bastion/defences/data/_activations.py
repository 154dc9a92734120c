"""Activations of any named layer of a torch classifier, through a forward hook."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bastion.errors import ConfigurationError, InputError

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


def penultimate_layer(module: nn.Module) -> str:
    """Name of the last ``nn.Linear`` layer: its *input* is the penultimate representation."""
    last = None
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear):
            last = name
    if last is None:
        raise ConfigurationError(
            "the model has no nn.Linear layer to take the penultimate activations from; "
            "name a layer with layer= (one of: "
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
    while i > 0 and isinstance(leaves[i - 1][1], _ELEMENTWISE):
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
