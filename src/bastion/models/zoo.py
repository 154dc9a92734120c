"""Small reference models and a seeded trainer, for the demo, tests and benchmarks."""

from __future__ import annotations

import logging

import torch
from torch import nn

from bastion.errors import ConfigurationError, InputError

__all__ = ["accuracy", "small_cnn", "small_mlp", "train_classifier"]

log = logging.getLogger(__name__)


def small_cnn(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    width: int = 16,
    batch_norm: bool = False,
) -> nn.Module:
    """Two 3×3 convolutions, a max-pool and two dense layers; any (C, H, W) with H, W ≥ 4.
    ``batch_norm``: a ``BatchNorm2d`` after each convolution (before its ReLU)."""
    c, h, w = input_shape
    if h < 4 or w < 4:
        raise ConfigurationError(f"small_cnn needs images of at least 4×4, got {input_shape}")

    def conv(c_in: int, c_out: int) -> list[nn.Module]:
        bn: list[nn.Module] = [nn.BatchNorm2d(c_out)] if batch_norm else []
        return [nn.Conv2d(c_in, c_out, 3, padding=1), *bn, nn.ReLU()]

    return nn.Sequential(
        *conv(c, width),
        *conv(width, 2 * width),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * (h // 2) * (w // 2), 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )


def small_mlp(n_features: int, num_classes: int, *, hidden: int = 64) -> nn.Module:
    """A one-hidden-layer ReLU network over flattened inputs."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
    )


def train_classifier(
    module: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = False,
) -> nn.Module:
    """Train ``module`` in place with Adam and cross-entropy, deterministically under ``seed``
    (``progress``: a bar over the epochs)."""
    from bastion._progress import progress_bar

    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise InputError(
            f"x and y must be non-empty and of equal length, got {len(x)} and {len(y)}"
        )
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    device = next(module.parameters()).device
    opt = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    module.train()
    with progress_bar(progress) as bar:
        task = bar.add_task("training", total=epochs)
        for epoch in range(epochs):
            _epoch(module, x, y, opt, loss_fn, device, batch_size, generator, epoch, epochs)
            bar.advance(task)
    module.eval()
    return module


def _epoch(
    module: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    opt: torch.optim.Optimizer,
    loss_fn: nn.Module,
    device: torch.device,
    batch_size: int,
    generator: torch.Generator,
    epoch: int,
    epochs: int,
) -> None:
    order = torch.randperm(x.shape[0], generator=generator)
    total = 0.0
    for i in range(0, x.shape[0], batch_size):
        idx = order[i : i + batch_size]
        xb, yb = x[idx].to(device), y[idx].to(device)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(module(xb), yb)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
    log.info("epoch %d/%d loss %.4f", epoch + 1, epochs, total / x.shape[0])


@torch.no_grad()
def accuracy(module: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``module`` on ``(x, y)`` (in eval mode; the mode is restored)."""
    was_training = module.training
    module.eval()
    try:
        device = next(module.parameters()).device
        correct = 0
        for i in range(0, x.shape[0], batch_size):
            pred = module(x[i : i + batch_size].to(device)).argmax(1).cpu()
            correct += int((pred == y[i : i + batch_size]).sum())
        return correct / max(1, x.shape[0])
    finally:
        module.train(was_training)
