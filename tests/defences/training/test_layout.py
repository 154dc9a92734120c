"""Channels-last gradients through ``Flatten`` (PGD-AT's fast path): same values, one layout,
hooks gone after training."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bastion.defences.training import AdversarialTrainer
from bastion.defences.training._layout import channels_last_gradients
from bastion.models.zoo import small_cnn


def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    xa = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xa), y, reduction="sum"), xa)
    return g


def test_gradients_reach_the_pool_channels_last_with_the_same_values() -> None:
    torch.manual_seed(0)
    model = small_cnn((3, 8, 8), 10, width=4).eval()
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (5,), generator=torch.Generator().manual_seed(2))
    expected = _input_grad(model, x, y)
    model.to(memory_format=torch.channels_last)
    xcl = x.contiguous(memory_format=torch.channels_last)
    pooled: list[torch.Tensor] = []
    model[4].register_full_backward_hook(lambda m, gi, go: pooled.append(go[0]))  # MaxPool2d
    without = _input_grad(model, xcl, y)
    assert not pooled[-1].is_contiguous(memory_format=torch.channels_last)  # the slow case
    handles = channels_last_gradients(model)
    assert len(handles) == 1  # one Flatten
    with_hook = _input_grad(model, xcl, y)
    assert pooled[-1].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(with_hook, without, atol=1e-6, rtol=0)
    torch.testing.assert_close(with_hook, expected, atol=1e-5, rtol=0)
    for h in handles:
        h.remove()
    _input_grad(model, xcl, y)
    assert not pooled[-1].is_contiguous(memory_format=torch.channels_last)


def test_pgd_at_leaves_no_hook_behind() -> None:
    torch.manual_seed(0)
    model = small_cnn((1, 8, 8), 10, width=4)
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    y = torch.randint(0, 10, (40,), generator=torch.Generator().manual_seed(4))
    AdversarialTrainer(eps=0.1, steps=2, epochs=1, batch_size=20, channels_last=True).fit(
        model, (x, y)
    )
    assert all(not m._forward_pre_hooks for m in model.modules())
