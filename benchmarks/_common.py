"""Shared pieces of the benchmarks: the MNIST CNN (trained once, cached), timing, metrics.

Everything here is deterministic under its seed. Nothing downloads: MNIST comes from the idx
files found by :func:`bastion.data.load_mnist`.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bastion.data import load_mnist


@dataclass(frozen=True)
class TrainConfig:
    """How the benchmark CNN is trained; its hash keys the cached weights."""

    n_train: int = 8000
    epochs: int = 4
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    arch: str = "conv16-pool-conv32-pool-fc100-fc10"

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


class SmallCNN(nn.Module):
    """conv(1→16, 3×3) → ReLU → maxpool → conv(16→32, 3×3) → ReLU → maxpool → fc 100 → fc 10."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class CountingNet(nn.Module):
    """Wraps a network and counts the rows it is asked to classify (queries)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += int(x.shape[0])
        if x.dtype != torch.float32:  # ART's HopSkipJump hands over float64 arrays
            x = x.float()
        return self.net(x)


@dataclass(frozen=True)
class MnistSplit:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def mnist_split(n_train: int) -> MnistSplit:
    """MNIST test images: the first ``n_train`` for training, the rest held out."""
    data = load_mnist()
    train, rest = data.split(n_train)
    return MnistSplit(train.x, train.y, rest.x, rest.y)


def train_cnn(split: MnistSplit, cfg: TrainConfig, cache_dir: Path, log: Callable[[str], None]
              ) -> SmallCNN:
    """Train (or load from ``cache_dir``) the seeded CNN; returns it in eval mode on the CPU."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"mnist_cnn_{cfg.key()}.pt"
    torch.manual_seed(cfg.seed)
    net = SmallCNN()
    if path.is_file():
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        log(f"loaded cached CNN {path}")
        return net.eval()
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    x, y = split.x_train, split.y_train
    start = time.perf_counter()
    net.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(x.shape[0], generator=gen)
        total = 0.0
        for i in range(0, x.shape[0], cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += float(loss) * idx.shape[0]
        log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {total / x.shape[0]:.4f}")
    log(f"trained CNN in {time.perf_counter() - start:.1f}s")
    net.eval()
    tmp = path.with_suffix(".tmp")
    torch.save(net.state_dict(), tmp)
    tmp.replace(path)
    return net


@torch.no_grad()
def predict(net: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    dev = next(net.parameters()).device
    return torch.cat([net(x[i : i + batch_size].to(dev)).argmax(1).cpu()
                      for i in range(0, x.shape[0], batch_size)])


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float], Any]:
    """Median wall-clock seconds of ``repeats`` calls, all times, and the last result."""
    times: list[float] = []
    out: Any = None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, out


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def attack_metrics(net: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor,
                   *, eps_linf: float | None = None, eps_l2: float | None = None
                   ) -> dict[str, Any]:
    """Measure one attack's output the same way for every library.

    ``robust_accuracy``: fraction classified correctly both clean and adversarially.
    ``success_rate``: among clean-correct samples, the fraction whose adversarial input is
    misclassified. Norms are medians over those successes. For minimum-norm attacks,
    ``robust_accuracy_at_l2`` counts a success only when its L2 norm is within ``eps_l2``.
    """
    x_adv = x_adv.detach().float().cpu()
    clean = predict(net, x) == y
    adv_ok = predict(net, x_adv) == y
    delta = (x_adv - x).flatten(1)
    l2 = delta.norm(dim=1)
    linf = delta.abs().amax(dim=1)
    success = clean & ~adv_ok
    n_clean = int(clean.sum())
    out: dict[str, Any] = {
        "n": int(x.shape[0]),
        "clean_accuracy": float(clean.float().mean()),
        "robust_accuracy": float((clean & adv_ok).float().mean()),
        "success_rate": float(success.sum()) / n_clean if n_clean else 0.0,
        "median_l2": float(l2[success].median()) if bool(success.any()) else None,
        "median_linf": float(linf[success].median()) if bool(success.any()) else None,
        "max_linf": float(linf.max()),
        "in_bounds": bool(((x_adv >= 0) & (x_adv <= 1)).all()),
        "finite": bool(torch.isfinite(x_adv).all()),
    }
    if eps_linf is not None:
        out["within_eps"] = bool((linf <= eps_linf + 1e-5).all())
    if eps_l2 is not None:
        robust = clean & ~(success & (l2 <= eps_l2))
        out["robust_accuracy_at_l2"] = float(robust.float().mean())
        out["eps_l2"] = eps_l2
    return out
