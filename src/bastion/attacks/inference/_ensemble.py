"""Train K reference models at once: the same recipe as K sequential runs, one batched loop.

Membership attacks (LiRA, shadow models) train several small models of the same architecture
on different subsets of one pool. Trained one after the other, each optimiser step of a small
network is dominated by per-step overhead (Python, autograd, the optimiser), not arithmetic.
Here the K models' parameters are stacked into ``(K, ...)`` tensors at each step; one forward
pass evaluates all K on their own mini-batches through ``torch.func.vmap`` over
``torch.func.functional_call``, one backward pass gives all K gradients, and one fused Adam
(``torch.optim.Adam(fused=True)``, one pass over memory per update) moves all K.

Each model follows exactly the recipe of :func:`bastion.models.zoo.train_classifier`: its own
initialisation (``torch.manual_seed(seed)`` before building it), its own epoch permutations
(``torch.Generator().manual_seed(seed)``), mini-batches of ``batch_size`` with a smaller last
one, mean cross-entropy per batch, Adam with L2 ``weight_decay`` and torch's default betas
and eps (Adam keeps a step count per parameter tensor, so one optimiser over all K models is
K independent Adams). Models with fewer samples (so fewer steps per epoch) sit out the extra
steps: padded rows carry zero weight and an idle model's gradients are dropped, so Adam skips
it. Results equal sequential training up to floating-point rounding.

Modules with buffers (batch norm) are trained sequentially instead, since a batched forward
pass cannot update per-model running statistics in place.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from bastion.errors import InputError

__all__ = ["train_ensemble"]

log = logging.getLogger(__name__)


def train_ensemble(
    make: Callable[[], nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    subsets: Sequence[torch.Tensor],
    seeds: Sequence[int],
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
) -> list[nn.Module]:
    """Train ``len(subsets)`` fresh ``make()`` models, model k on ``x[subsets[k]]`` under
    ``seeds[k]``, all in one batched loop; returns them in eval mode.

    ``subsets`` are 1-d index tensors into the shared pool ``(x, y)`` (any lengths >= 1).
    """
    k_models = len(subsets)
    if k_models != len(seeds) or k_models == 0:
        raise InputError(
            f"give one seed per subset, got {len(subsets)} subsets and {len(seeds)} seeds"
        )
    if x.shape[0] != y.shape[0]:
        raise InputError(f"x has {x.shape[0]} rows, y {y.shape[0]}")
    subsets = [torch.as_tensor(s, dtype=torch.long).flatten().cpu() for s in subsets]
    if min(s.numel() for s in subsets) == 0:
        raise InputError("every reference model needs at least one training sample")
    modules = []
    for seed in seeds:
        torch.manual_seed(int(seed))  # initialisation as in a sequential run
        modules.append(make())
    if any(True for _ in modules[0].buffers()):
        return _sequential(modules, x, y, subsets, seeds, epochs, batch_size, lr, weight_decay)

    device = next(modules[0].parameters()).device
    names = [name for name, _ in modules[0].named_parameters()]
    leaves = [list(m.parameters()) for m in modules]
    for m in modules:
        m.train()
    base = copy.deepcopy(modules[0]).to("meta")
    base.train()

    def loss_one(
        params: tuple[torch.Tensor, ...], xb: torch.Tensor, yb: torch.Tensor, wb: torch.Tensor
    ) -> torch.Tensor:
        logits = functional_call(base, dict(zip(names, params, strict=True)), (xb,))
        ce = F.cross_entropy(logits, yb, reduction="none")
        return (ce * wb).sum() / wb.sum().clamp_min(1.0)

    batched_loss = vmap(loss_one)
    # one optimiser over every model's parameters: Adam is element-wise with a step count per
    # tensor, so this is K independent Adams; the fused kernel does each update in one pass
    opt = torch.optim.Adam(
        [p for ps in leaves for p in ps],
        lr=lr,
        weight_decay=weight_decay,
        fused=device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in leaves[0]),
    )
    counts = torch.tensor([s.numel() for s in subsets])
    n_steps = math.ceil(int(counts.max()) / batch_size)
    width = n_steps * batch_size
    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
    x_dev, y_dev = x.to(device), y.to(device)
    for epoch in range(epochs):
        index = torch.zeros(k_models, width, dtype=torch.long)
        weight = torch.zeros(k_models, width)
        for k, (subset, gen) in enumerate(zip(subsets, generators, strict=True)):
            order = torch.randperm(subset.numel(), generator=gen)
            index[k, : subset.numel()] = subset[order]
            weight[k, : subset.numel()] = 1.0
        index, weight = index.to(device), weight.to(device)
        total = 0.0
        for s in range(n_steps):
            cols = slice(s * batch_size, (s + 1) * batch_size)
            ib, wb = index[:, cols], weight[:, cols]
            stacked = tuple(torch.stack(group) for group in zip(*leaves, strict=True))
            losses = batched_loss(stacked, x_dev[ib], y_dev[ib], wb)
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            n_rows = wb.sum(1)
            total += float(losses.detach().mul(n_rows).sum())
            for k in torch.nonzero(n_rows == 0).flatten().tolist():
                for param in leaves[k]:  # a model out of batches this epoch sits the step out
                    param.grad = None
            opt.step()
        log.debug("ensemble epoch %d/%d mean loss %.4f", epoch + 1, epochs, total / counts.sum())
    for m in modules:
        m.eval()
    return modules


def _sequential(
    modules: list[nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    subsets: list[torch.Tensor],
    seeds: Sequence[int],
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
) -> list[nn.Module]:
    from bastion.models.zoo import train_classifier

    log.info("modules with buffers: training %d reference models one by one", len(modules))
    return [
        train_classifier(
            module,
            x[subset],
            y[subset],
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            seed=int(seed),
        )
        for module, subset, seed in zip(modules, subsets, seeds, strict=True)
    ]
