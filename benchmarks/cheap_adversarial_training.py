"""Fast and free adversarial training against PGD-AT (and natural training), on MNIST.

Same model (``bastion.models.zoo.small_cnn``, one seeded initialisation per repetition, copied
into every method), same data (a seeded shuffle of the MNIST idx files: ``--n-train`` training
and ``--n-test`` held-out images), same threat model (L∞ ``--eps``), same epochs budget, batch,
optimiser (Adam ``--lr``, constant schedule) and eps warm-up (``--warmup`` epochs; passes for
free AT) for every method:

- ``natural``: cross-entropy on clean batches for ``--epochs`` epochs;
- ``pgd``: PGD-AT, ``--pgd-steps`` steps of ``2.5 · eps / steps`` (Madry);
- ``fast``: FGSM from a random start, ``alpha = 1.25 · eps``, with the catastrophic-overfitting
  guard (its firings are counted);
- ``free``: ``--replays`` replays per mini-batch, ``ceil(epochs / replays)`` passes (the paper's
  budget: the cost of ``--epochs`` natural epochs).

Every trained model is evaluated with the same bastion PGD-40 (step 0.01, random start, one
seed) on the same held-out images. Times are the wall seconds of ``fit``; the methods run
interleaved within each repetition, and each time is divided by PGD-AT's *of the same
repetition* before the median over repetitions is taken, so that load on the machine cancels.

Run (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cheap_adversarial_training.py \\
        --out /tmp/cheap-at.json

Nothing downloads; MNIST comes from ``bastion.data.load_mnist()`` (../shared/data/mnist).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from typing import Any

import torch
from torch import nn

from bastion.attacks.evasion import PGD
from bastion.data import load_mnist
from bastion.defences.training import make_adversarial_trainer
from bastion.models import TorchClassifier
from bastion.models.zoo import accuracy, small_cnn, train_classifier

METHODS = ("natural", "pgd", "fast", "free")


def _data(n_train: int, n_test: int, seed: int) -> tuple[torch.Tensor, ...]:
    data = load_mnist()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    x, y = data.x[perm], data.y[perm]
    return x[:n_train], y[:n_train], x[n_train : n_train + n_test], y[n_train : n_train + n_test]


def _robust(module: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> float:
    clf = TorchClassifier(module, input_shape=(1, 28, 28), num_classes=10)
    return PGD(eps=eps, steps=40, step_size=0.01, seed=99).generate(clf, x, y).robust_accuracy


def _train(method: str, module: nn.Module, x: torch.Tensor, y: torch.Tensor,
           a: argparse.Namespace, seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    if method == "natural":
        train_classifier(module, x, y, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
                         seed=seed)
        return {"seconds": time.perf_counter() - t0}
    trainer = make_adversarial_trainer(
        method, eps=a.eps, steps=a.pgd_steps, replays=a.replays, epochs=a.epochs, lr=a.lr,
        batch_size=a.batch_size, schedule="constant", warmup_eps_epochs=a.warmup,
        patience=None, seed=seed,
    )
    report = trainer.fit(module, (x, y))
    out: dict[str, Any] = {"seconds": time.perf_counter() - t0, "trainer": repr(trainer),
                           "epochs_run": report.epochs_run}
    guard = getattr(report, "guard", None)
    if guard is not None:
        out["guard_fired"] = len(guard["events"])
        out["guard_summary"] = guard["summary"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--pgd-steps", type=int, default=10)
    p.add_argument("--replays", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    x, y, xt, yt = _data(a.n_train, a.n_test, 0)
    runs: list[dict[str, Any]] = []
    for rep in range(a.repeats):
        torch.manual_seed(rep)
        init = small_cnn((1, 28, 28), 10)
        order = METHODS[rep % len(METHODS):] + METHODS[: rep % len(METHODS)]  # rotate
        row: dict[str, Any] = {"repeat": rep}
        for method in order:
            module = copy.deepcopy(init)
            info = _train(method, module, x, y, a, seed=rep)
            module.eval()
            info["clean"] = accuracy(module, xt, yt)
            info["robust"] = _robust(module, xt, yt, a.eps)
            row[method] = info
            print(f"repeat {rep} {method:8s} clean {info['clean']:.3f} robust "
                  f"{info['robust']:.3f} {info['seconds']:.1f}s "
                  f"{info.get('guard_summary', '')}", flush=True)
        runs.append(row)
    summary = {}
    for m in METHODS:
        summary[m] = {
            "clean_median": statistics.median(r[m]["clean"] for r in runs),
            "robust_median": statistics.median(r[m]["robust"] for r in runs),
            "robust_all": [r[m]["robust"] for r in runs],
            "time_vs_pgd_median": statistics.median(
                r[m]["seconds"] / r["pgd"]["seconds"] for r in runs
            ),
            "guard_fired_runs": sum(1 for r in runs if r[m].get("guard_fired")),
        }
    doc = {"args": vars(a), "platform": platform.platform(), "torch": torch.__version__,
           "runs": runs, "summary": summary}
    print("\n| method | clean (median) | robust PGD-40 (median) | robust, each run | "
          "time / PGD-AT (median) |")
    print("|---|---|---|---|---|")
    for m, s in summary.items():
        each = ", ".join(f"{v:.3f}" for v in s["robust_all"])
        print(f"| {m} | {s['clean_median']:.3f} | {s['robust_median']:.3f} | {each} | "
              f"{s['time_vs_pgd_median']:.2f}× |")
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(doc, fh, indent=2)


if __name__ == "__main__":
    main()
