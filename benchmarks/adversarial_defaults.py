"""Adversarial training out of the box: bastion's defaults vs ART's, at several budgets.

Both libraries get what a user gives them — the same model (one seeded initialisation loaded
into both), data, threat model and inner attack (L∞ ``--eps``, ``--steps`` PGD steps of
``--step-size`` from a random start), batch size, optimiser (Adam at ``--lr``) and number of
epochs — and each library's own defaults for everything else: bastion's
:class:`~bastion.defences.training.AdversarialTrainer` with ``schedule``/eps warm-up/batch-norm
handling left at their defaults (no validation set, so no early stopping), ART 1.20.1's
``AdversarialTrainerMadryPGD`` (constant learning rate, no warm-up, its attack run with the
model in eval mode). Both trained models are then attacked by the *same* bastion PGD
(``--eval-steps`` steps of 2.5·eps/steps, random start, one seed) on the same held-out images.

Data sets: ``mnist`` (a slice of the shared t10k idx files chosen by ``--offset``: the tests
tune on other slices) and ``digits`` (scikit-learn's 8×8 digits, seeded split). Models:
``cnn`` (``small_cnn``) and ``cnn_bn`` (``small_cnn(batch_norm=True)``).

Run (from the repository root, in the benchmark venv that has ART)::

    .bench-venv/bin/python benchmarks/adversarial_defaults.py --data mnist --n-train 3000 \\
        --epochs 1 4 --models cnn_bn cnn --out /tmp/ad.json

``--variants 'old={"schedule": "cosine", "warmup_eps_epochs": 0}' bastion={}`` runs bastion
with other settings as well (``--no-art``: without ART), e.g. the old defaults.
Nothing downloads.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from bastion.attacks.evasion import PGD
from bastion.data import load_digits, load_mnist
from bastion.defences.training import AdversarialTrainer
from bastion.models import TorchClassifier
from bastion.models.zoo import accuracy, small_cnn

Args = argparse.Namespace
XY = tuple[torch.Tensor, torch.Tensor]


def _data(a: argparse.Namespace) -> tuple[torch.Tensor, ...]:
    if a.data == "digits":
        ds = load_digits()
        perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(a.seed))
        x, y = ds.x[perm], ds.y[perm]
        n_test = a.n_test
        return (
            x[n_test : n_test + a.n_train],
            y[n_test : n_test + a.n_train],
            x[:n_test],
            y[:n_test],
        )
    ds = load_mnist()
    x, y = ds.x[a.offset :], ds.y[a.offset :]
    return (
        x[: a.n_train],
        y[: a.n_train],
        x[a.n_train : a.n_train + a.n_test],
        y[a.n_train : a.n_train + a.n_test],
    )


def _model(kind: str, shape: tuple[int, int, int], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return small_cnn(shape, 10, batch_norm=kind == "cnn_bn")


def _robust(module: nn.Module, x: torch.Tensor, y: torch.Tensor, a: argparse.Namespace) -> float:
    shape = tuple(x.shape[1:])
    clf = TorchClassifier(module, input_shape=shape, num_classes=10)
    attack = PGD(eps=a.eps, steps=a.eval_steps, step_size=2.5 * a.eps / a.eval_steps, seed=99)
    return attack.generate(clf, x, y).robust_accuracy


def _bastion(a: Args, module: nn.Module, xy: XY, epochs: int, extra: str) -> dict[str, Any]:
    kw: dict[str, Any] = dict(
        eps=a.eps,
        steps=a.steps,
        step_size=a.step_size,
        batch_size=a.batch_size,
        lr=a.lr,
        optimizer="adam",
        epochs=epochs,
        seed=a.seed,
    )
    kw.update(json.loads(extra))
    trainer = AdversarialTrainer(**kw)
    report = trainer.fit(module, xy)
    return {
        "train_accuracy": [round(h.train_accuracy, 4) for h in report.history],
        "schedule": report.schedule,
        "warmup_steps": report.warmup_steps,
        "diagnostics": [d.code for d in report.diagnostics],
    }


def _art(a: Args, module: nn.Module, xy: XY, epochs: int, extra: str) -> dict[str, Any]:
    x, y = xy
    from art.defences.trainer import AdversarialTrainerMadryPGD
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(
        model=module,
        loss=nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(module.parameters(), lr=a.lr),
        input_shape=tuple(x.shape[1:]),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
    np.random.seed(a.seed)
    trainer = AdversarialTrainerMadryPGD(
        clf,
        nb_epochs=epochs,
        batch_size=a.batch_size,
        eps=a.eps,
        eps_step=a.step_size,
        max_iter=a.steps,
        num_random_init=1,
    )
    trainer.fit(x.numpy(), y.numpy())
    module.eval()
    return {}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=["mnist", "digits"], default="mnist")
    p.add_argument("--offset", type=int, default=5000, help="first MNIST image used")
    p.add_argument("--n-train", type=int, default=3000)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--models", nargs="+", default=["cnn_bn", "cnn"])
    p.add_argument("--epochs", type=int, nargs="+", default=[1, 4])
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--step-size", type=float, default=0.025)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--art", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument(
        "--variants",
        nargs="+",
        default=["bastion={}"],
        help="bastion runs as LABEL=JSON (extra AdversarialTrainer arguments; {} = defaults)",
    )
    p.add_argument("--out", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    x, y, xt, yt = _data(a)
    shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
    rows: list[dict[str, Any]] = []
    for kind in a.models:
        for epochs in a.epochs:
            runs = [tuple(v.split("=", 1)) for v in a.variants] + ([("art", "")] if a.art else [])
            for label, extra_kw in runs:
                module = _model(kind, shape, a.seed)
                t0 = time.perf_counter()
                fit = _art if label == "art" else _bastion
                extra = fit(a, module, (x, y), epochs, extra_kw)
                seconds = time.perf_counter() - t0
                row = {
                    "data": a.data,
                    "n_train": len(x),
                    "model": kind,
                    "epochs": epochs,
                    "library": label,
                    "clean": accuracy(module, xt, yt),
                    "robust": _robust(module, xt, yt, a),
                    "seconds": seconds,
                    **extra,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\n| data | model | epochs | library | clean | robust (PGD-{a.eval_steps}) |")
    print("|---|---|---:|---|---:|---:|")
    for r in rows:
        print(
            f"| {r['data']} {r['n_train']} | {r['model']} | {r['epochs']} | {r['library']} | "
            f"{r['clean']:.1%} | {r['robust']:.1%} |"
        )
    if a.out:
        meta = {"args": vars(a), "python": platform.python_version(), "torch": torch.__version__}
        with open(a.out, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
