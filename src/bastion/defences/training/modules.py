"""Copies of a torch module for hardening: a trainable copy, a freshly initialised one, bytes.

``bastion harden`` and :func:`bastion.defences.fix.harden_from_audit` harden a copy of the
user's model (never the model itself); DP-SGD starts from fresh weights, since fine-tuning a
model that saw the data without privacy would void the guarantee.
"""

from __future__ import annotations

import copy
import io
import warnings
from typing import TYPE_CHECKING

from bastion.errors import ModelError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["fresh_weights", "jit_save", "module_bytes", "trainable_copy"]


def jit_save(net: nn.Module, buffer: io.BytesIO) -> None:
    """``torch.jit.save``, which torch marks deprecated; users' TorchScript files stay supported."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(net, buffer)


def trainable_copy(net: nn.Module) -> nn.Module:
    """A trainable copy of ``net``. ``copy.deepcopy`` of a TorchScript module gives parameters
    that are not leaves (an optimiser refuses them), so those are copied by saving and loading."""
    import torch

    if isinstance(net, torch.jit.ScriptModule):
        buffer = io.BytesIO()
        jit_save(net, buffer)
        buffer.seek(0)
        device = next((p.device for p in net.parameters()), torch.device("cpu"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            loaded: nn.Module = torch.jit.load(buffer, map_location=device)
        return loaded
    return copy.deepcopy(net)


def fresh_weights(baseline: nn.Module, seed: int) -> nn.Module:
    """A copy of ``baseline`` with every layer re-initialised (seeded)."""
    import torch

    net = copy.deepcopy(baseline)
    torch.manual_seed(seed)
    for name, sub in net.named_modules():
        own = list(sub.parameters(recurse=False))
        if not own:
            continue
        reset = getattr(sub, "reset_parameters", None)
        if not callable(reset):
            raise ModelError(
                f"layer {name or 'module'} ({type(sub).__name__}) cannot be re-initialised; "
                "DP-SGD must train from fresh weights: use --arch, or a model whose layers "
                "have reset_parameters()"
            )
        reset()
    return net


def module_bytes(net: nn.Module) -> tuple[bytes, str]:
    """``net`` as file bytes and their format: TorchScript stays TorchScript, anything else is a
    ``state_dict`` on the CPU (load it with the same architecture)."""
    import torch

    buffer = io.BytesIO()
    if isinstance(net, torch.jit.ScriptModule):
        jit_save(net, buffer)
        return buffer.getvalue(), "torchscript"
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, buffer)
    return buffer.getvalue(), "state_dict"
