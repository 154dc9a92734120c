"""Hardening benchmarks. DP part: bastion's DP-SGD step against Opacus's, and against plain SGD.

Run it in the project venv (Opacus installed there)::

    nice .venv/bin/python benchmarks/hardening.py --repeats 5 --out bench-out/hardening-dp.json

For each model (an MLP and ``bastion.models.zoo.small_cnn`` on MNIST-shaped inputs) and each
batch size, the same seeded weights and the same batch of MNIST images go to three trainers:

* ``bastion``: :func:`bastion.defences.training.dp.private_gradient` (default engine: the
  Linear/Conv2d fast path of ``_fast_path.py`` where the model qualifies, as both models here
  do, else ``torch.func`` ``vmap(grad)``; per-sample clipping, Gaussian noise) + ``SGD.step``;
* ``bastion-vmap``: the same with ``engine="vmap"`` forced (materialised per-sample gradients);
* ``opacus``: ``opacus.GradSampleModule`` (backward hooks) + ``opacus.optimizers.DPOptimizer``
  (clipping, noise, step) — Opacus's default DP-SGD step;
* ``opacus-ghost``: Opacus's ghost clipping (``GradSampleModuleFastGradientClipping`` +
  ``DPOptimizerFastGradientClipping`` + ``DPLossFastGradientClipping``: per-sample norms
  without per-sample gradients, then a second backward of the re-weighted loss);
* ``plain``: forward, ``backward`` of the mean loss, ``SGD.step`` (non-private);
* ``noise``: drawing the step's Gaussian noise alone (one ``gaussian_fill`` call filling a flat
  buffer of all parameters, as bastion does), the part of a DP step no engine can avoid;
  reported as ms per step and as a fraction of the plain step, not as a trainer;
  ``noise-torch`` the same with torch's ``normal_`` (what Opacus draws), for comparison.

Each timing is ``--steps`` training steps on a fixed batch (the Poisson draw is identical
work for both DP libraries and left out); samples/s = steps × batch / seconds, median of
``--repeats`` interleaved repeats after a warm-up. Before timing, the DP gradients of both
libraries are checked to agree (noise off) on the batch. Accounting is shared: both use
Opacus's accountant, so a step of either spends the same ε.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bastion.defences.training.dp import gaussian_fill, private_gradient
from bastion.models.zoo import small_cnn, small_mlp

MODELS: dict[str, Callable[[], nn.Module]] = {
    "mlp-784-256-10": lambda: small_mlp(784, 10, hidden=256),
    "cnn-w8": lambda: small_cnn((1, 28, 28), 10, width=8),
}


def _batch(n: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from bastion.data import load_mnist

        data = load_mnist()
        x, y = data.x[:n], data.y[:n]
    except Exception:  # no MNIST files: random images of the same shape
        gen = torch.Generator().manual_seed(0)
        x, y = torch.rand(n, 1, 28, 28, generator=gen), torch.randint(0, 10, (n,), generator=gen)
    return x.to(device), y.to(device)


def _fresh(name: str, device: str) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[name]().to(device)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def make_bastion(
    name: str, x: torch.Tensor, y: torch.Tensor, sigma: float, engine: str = "auto"
) -> Callable[[], None]:
    net = _fresh(name, str(x.device)).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    gen = torch.Generator(device=x.device).manual_seed(0)

    def step() -> None:
        private_gradient(
            net,
            x,
            y,
            max_grad_norm=1.0,
            noise_std=sigma,
            expected_batch_size=x.shape[0],
            generator=gen,
            engine=engine,
        )
        opt.step()

    return step


def make_opacus(name: str, x: torch.Tensor, y: torch.Tensor, sigma: float) -> Callable[[], None]:
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    net = GradSampleModule(_fresh(name, str(x.device)).train())
    opt = DPOptimizer(
        torch.optim.SGD(net.parameters(), lr=0.05),
        noise_multiplier=sigma,
        max_grad_norm=1.0,
        expected_batch_size=x.shape[0],
    )

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()

    return step


def make_opacus_ghost(
    name: str, x: torch.Tensor, y: torch.Tensor, sigma: float
) -> Callable[[], None]:
    """Opacus's ghost clipping (Li et al. 2022): per-sample norms without per-sample gradients,
    then a second backward of the re-weighted loss."""
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.optimizers import DPOptimizerFastGradientClipping
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

    net = GradSampleModuleFastGradientClipping(
        _fresh(name, str(x.device)).train(), max_grad_norm=1.0, use_ghost_clipping=True
    )
    opt = DPOptimizerFastGradientClipping(
        torch.optim.SGD(net.parameters(), lr=0.05),
        noise_multiplier=sigma,
        max_grad_norm=1.0,
        expected_batch_size=x.shape[0],
    )
    crit = DPLossFastGradientClipping(net, opt, nn.CrossEntropyLoss())

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        crit(net(x), y).backward()
        opt.step()

    return step


def make_plain(name: str, x: torch.Tensor, y: torch.Tensor, sigma: float) -> Callable[[], None]:
    net = _fresh(name, str(x.device)).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()

    return step


def make_noise(
    name: str, x: torch.Tensor, y: torch.Tensor, sigma: float, torch_normal: bool = False
) -> Callable[[], None]:
    n = sum(p.numel() for p in _fresh(name, str(x.device)).parameters())
    buf = torch.empty(n, device=x.device)
    gen = torch.Generator(device=x.device).manual_seed(0)

    def step() -> None:
        if torch_normal:
            buf.normal_(0.0, sigma, generator=gen)
        else:
            gaussian_fill(buf, sigma, gen)

    return step


def check_same_gradient(name: str, x: torch.Tensor, y: torch.Tensor) -> float:
    """Largest absolute difference between bastion's and Opacus's noiseless DP gradients."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    ours = _fresh(name, str(x.device))
    private_gradient(ours, x, y, max_grad_norm=1.0, noise_std=0.0, expected_batch_size=len(x))
    gsm = GradSampleModule(_fresh(name, str(x.device)))
    opt = DPOptimizer(
        torch.optim.SGD(gsm.parameters(), lr=0.0),
        noise_multiplier=0.0,
        max_grad_norm=1.0,
        expected_batch_size=x.shape[0],
    )
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(gsm(x), y).backward()
    opt.pre_step()  # clip, (no) noise, scale: leaves the DP gradient in p.grad
    diffs = [
        float((a.grad - b.grad).abs().max())
        for a, b in zip(ours.parameters(), gsm._module.parameters(), strict=True)
    ]
    return max(diffs)


CLOCK: Callable[[], float] = time.perf_counter  # --clock cpu: time.process_time


def time_steps(step: Callable[[], None], steps: int, device: str) -> float:
    _sync(device)
    start = CLOCK()
    for _ in range(steps):
        step()
    _sync(device)
    return CLOCK() - start


def run(
    models: list[str], batches: list[int], steps: int, repeats: int, device: str, sigma: float
) -> list[dict[str, Any]]:
    rows = []
    makers: dict[str, Callable[..., Callable[[], None]]] = {
        "bastion": make_bastion,
        "bastion-vmap": lambda n, x, y, s: make_bastion(n, x, y, s, engine="vmap"),
        "opacus": make_opacus,
        "opacus-ghost": make_opacus_ghost,
        "plain": make_plain,
        "noise": make_noise,
        "noise-torch": lambda n, x, y, s: make_noise(n, x, y, s, torch_normal=True),
    }
    for name in models:
        for b in batches:
            x, y = _batch(b, device)
            diff = check_same_gradient(name, x, y)
            fns = {k: mk(name, x, y, sigma) for k, mk in makers.items()}
            for fn in fns.values():  # warm-up
                time_steps(fn, 2, device)
            times: dict[str, list[float]] = {k: [] for k in fns}
            for _ in range(repeats):  # interleaved
                for k, fn in fns.items():
                    times[k].append(time_steps(fn, steps, device))
            med = {k: statistics.median(v) for k, v in times.items()}
            sps = {k: steps * b / med[k] for k in med if not k.startswith("noise")}
            row = {
                "model": name,
                "batch": b,
                "steps": steps,
                "repeats": repeats,
                "max_grad_diff_vs_opacus": diff,
                "samples_per_s": sps,
                "bastion_over_opacus_speed": sps["bastion"] / sps["opacus"],
                "bastion_over_opacus_ghost_speed": sps["bastion"] / sps["opacus-ghost"],
                "bastion_overhead_vs_plain": med["bastion"] / med["plain"],
                "opacus_overhead_vs_plain": med["opacus"] / med["plain"],
                "plain_ms_per_step": 1e3 * med["plain"] / steps,
                "bastion_ms_per_step": 1e3 * med["bastion"] / steps,
                "noise_ms_per_step": 1e3 * med["noise"] / steps,
                "noise_over_plain": med["noise"] / med["plain"],
                "noise_torch_ms_per_step": 1e3 * med["noise-torch"] / steps,
                "seconds": times,
            }
            rows.append(row)
            print(
                f"{name:16s} batch {b:4d}: bastion {sps['bastion']:9.0f}/s  "
                f"(vmap {sps['bastion-vmap']:7.0f}/s)  "
                f"opacus-ghost {sps['opacus-ghost']:7.0f}/s  opacus "
                f"{sps['opacus']:9.0f}/s  plain {sps['plain']:9.0f}/s  | bastion/opacus "
                f"{row['bastion_over_opacus_speed']:.2f}x  overhead bastion "
                f"{row['bastion_overhead_vs_plain']:.2f}x opacus "
                f"{row['opacus_overhead_vs_plain']:.2f}x  | noise {row['noise_over_plain']:.2f}x "
                f"plain | grad diff {diff:.1e}",
                flush=True,
            )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--batches", default="64,256")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--sigma", type=float, default=1.0)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: process CPU time (fairer on a shared, loaded machine; CPU runs only)",
    )
    a = p.parse_args()
    global CLOCK
    CLOCK = time.process_time if a.clock == "cpu" else time.perf_counter
    torch.set_num_threads(a.threads)
    # Opacus's hooks on a first layer whose input needs no gradient: harmless, and per step.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    import opacus

    rows = run(
        a.models.split(","),
        [int(b) for b in a.batches.split(",")],
        a.steps,
        a.repeats,
        a.device,
        a.sigma,
    )
    meta = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "opacus": opacus.__version__,
        "threads": a.threads,
        "device": a.device,
        "clock": a.clock,
        "cpu": platform.processor() or platform.machine(),
    }
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
