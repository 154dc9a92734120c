"""Adversarial training: bastion PGD-AT vs ART's ``AdversarialTrainerMadryPGD``, on MNIST.

Same model (``bastion.models.zoo.small_cnn``, width 16, one seeded initialisation loaded into
both), same data (a seeded shuffle of the MNIST idx files: ``--n-train`` training and
``--n-test`` test images), same threat model and inner attack (L∞ eps 0.3, ``--steps`` PGD steps
of ``--step-size`` from a uniform random start, the model in eval mode during the attack), same
batch size, epochs, optimiser (Adam, constant learning rate) and shuffling-free comparison of
the result: both trained models are evaluated with the *same* bastion PGD-40 (step 0.01, random
start, one seed) on the same test images.

Timing: (1) seconds per epoch of the full runs (median over epochs; ART is driven one epoch at a
time, its optimiser state kept); (2) an interleaved micro-benchmark, robust to other load on the
machine: ``--micro-repeats`` alternating ART / bastion runs of one epoch over the first
``--micro-n`` training images, on throwaway copies of the initial model; median of each.

Run (from the repository root, in the benchmark venv that has ART 1.20.1)::

    .bench-venv/bin/python benchmarks/adversarial_training.py --out /tmp/at.json

Nothing downloads; MNIST comes from ``bastion.data.load_mnist()`` (../shared/data/mnist).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import platform
import statistics
import time
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from bastion.attacks.evasion import PGD
from bastion.data import load_mnist
from bastion.defences.training import AdversarialTrainer
from bastion.models import TorchClassifier
from bastion.models.zoo import accuracy, small_cnn


def _data(n_train: int, n_test: int, seed: int) -> tuple[torch.Tensor, ...]:
    data = load_mnist()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    x, y = data.x[perm], data.y[perm]
    return x[:n_train], y[:n_train], x[n_train : n_train + n_test], y[n_train : n_train + n_test]


def _robust(module: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> float:
    clf = TorchClassifier(module, input_shape=(1, 28, 28), num_classes=10)
    return PGD(eps=eps, steps=40, step_size=0.01, seed=99).generate(clf, x, y).robust_accuracy


def _bastion_trainer(
    a: argparse.Namespace, epochs: int, *, warmup: int = 0, schedule: str = "constant"
) -> AdversarialTrainer:
    return AdversarialTrainer(
        method="pgd",
        eps=a.eps,
        steps=a.steps,
        step_size=a.step_size,
        epochs=epochs,
        lr=a.lr,
        optimizer="adam",
        batch_size=a.batch_size,
        schedule=schedule,
        warmup_eps_epochs=warmup,
        patience=None,
        seed=a.seed,
    )


def _art_trainer(a: argparse.Namespace, module: nn.Module) -> Any:
    from art.defences.trainer import AdversarialTrainerMadryPGD
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(
        model=module,
        loss=nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(module.parameters(), lr=a.lr),
        input_shape=(1, 28, 28),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
    return AdversarialTrainerMadryPGD(
        clf,
        nb_epochs=1,
        batch_size=a.batch_size,
        eps=a.eps,
        eps_step=a.step_size,
        max_iter=a.steps,
        num_random_init=1,
    )


def _art_epochs(
    a: argparse.Namespace, module: nn.Module, x: np.ndarray, y: np.ndarray
) -> tuple[list[float], float]:
    """ART, one epoch per call; with ``--warmup``, the warm-up epochs are driven one batch at a
    time so that eps (and the step, in proportion) ramps per step exactly as bastion's does.
    The learning-rate schedule is bastion's, as a ``LambdaLR`` that ART steps after each batch."""
    trainer = _art_trainer(a, module)
    per_epoch = math.ceil(len(x) / a.batch_size)
    factor = _bastion_trainer(a, a.epochs, schedule=a.schedule)._lr_factor(a.epochs * per_epoch)
    opt = trainer.get_classifier().optimizer
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    rng = np.random.default_rng(a.seed)
    times = []
    step = 0
    for epoch in range(a.epochs):
        t0 = time.perf_counter()
        if epoch < a.warmup:
            order = rng.permutation(len(x))
            for i in range(0, len(x), a.batch_size):
                idx = order[i : i + a.batch_size]
                e = a.eps * min(1.0, (step + 1) / (a.warmup * per_epoch))
                trainer.attack.set_params(eps=e, eps_step=a.step_size * e / a.eps)
                trainer.fit(x[idx], y[idx], nb_epochs=1, batch_size=len(idx), scheduler=sched)
                step += 1
        else:
            trainer.attack.set_params(eps=a.eps, eps_step=a.step_size)
            trainer.fit(x, y, nb_epochs=1, batch_size=a.batch_size, scheduler=sched)
            step += per_epoch
        times.append(time.perf_counter() - t0)
    return times, time.process_time()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=8000)
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--step-size", type=float, default=0.075)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--micro-n", type=int, default=1280)
    p.add_argument("--micro-repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=0, help="eps warm-up epochs (both libraries)")
    p.add_argument("--schedule", default="constant", help="LR schedule (both libraries)")
    p.add_argument("--skip-art", action="store_true")
    p.add_argument("--recipe", action="store_true", help="also run bastion's warm-up+cosine recipe")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(a.threads)

    x, y, xt, yt = _data(a.n_train, a.n_test, a.seed)
    torch.manual_seed(a.seed)
    init = small_cnn((1, 28, 28), 10, width=16).state_dict()

    def fresh() -> nn.Module:
        m = small_cnn((1, 28, 28), 10, width=16)
        m.load_state_dict(copy.deepcopy(init))
        return m

    results: dict[str, Any] = {"config": vars(a)}
    # --- interleaved micro-benchmark (throwaway copies) -----------------------------------
    xs, ys = x[: a.micro_n], y[: a.micro_n]
    micro: dict[str, list[float]] = {"bastion": [], "art": [], "bastion_cpu": [], "art_cpu": []}
    for _ in range(a.micro_repeats):
        if not a.skip_art:
            np.random.seed(a.seed)
            t0, c0 = time.perf_counter(), time.process_time()
            _art_trainer(a, fresh()).fit(xs.numpy(), ys.numpy(), nb_epochs=1)
            micro["art"].append(time.perf_counter() - t0)
            micro["art_cpu"].append(time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        _bastion_trainer(a, 1).fit(fresh(), (xs, ys))
        micro["bastion"].append(time.perf_counter() - t0)
        micro["bastion_cpu"].append(time.process_time() - c0)
    results["micro_seconds"] = micro
    print("micro", json.dumps(micro), flush=True)

    # --- full runs -------------------------------------------------------------------------
    model_b = fresh()
    t0, c0 = time.perf_counter(), time.process_time()
    report = _bastion_trainer(a, a.epochs, warmup=a.warmup, schedule=a.schedule).fit(
        model_b, (x, y)
    )
    results["bastion"] = {
        "total_seconds": time.perf_counter() - t0,
        "cpu_seconds_per_epoch": (time.process_time() - c0) / a.epochs,
        "epoch_seconds": [h.seconds for h in report.history],
        "clean_accuracy": accuracy(model_b, xt, yt),
        "robust_accuracy_pgd40": _robust(model_b, xt, yt, a.eps),
    }
    print("bastion", json.dumps(results["bastion"]), flush=True)
    if not a.skip_art:
        model_a = fresh()
        np.random.seed(a.seed)
        t0, c0 = time.perf_counter(), time.process_time()
        times, c1 = _art_epochs(a, model_a, x.numpy(), y.numpy())
        model_a.eval()
        results["art"] = {
            "total_seconds": time.perf_counter() - t0,
            "cpu_seconds_per_epoch": (c1 - c0) / a.epochs,
            "epoch_seconds": times,
            "clean_accuracy": accuracy(model_a, xt, yt),
            "robust_accuracy_pgd40": _robust(model_a, xt, yt, a.eps),
        }
        print("art", json.dumps(results["art"]), flush=True)
        mb = statistics.median(results["bastion"]["epoch_seconds"])
        ma = statistics.median(times)
        results["ratio_epoch_median"] = mb / ma
        results["ratio_micro_median"] = statistics.median(micro["bastion"]) / statistics.median(
            micro["art"]
        )
        results["ratio_micro_cpu_median"] = statistics.median(
            micro["bastion_cpu"]
        ) / statistics.median(micro["art_cpu"])
        results["ratio_cpu_per_epoch"] = (
            results["bastion"]["cpu_seconds_per_epoch"] / results["art"]["cpu_seconds_per_epoch"]
        )
    if a.recipe:
        # bastion's own recipe for small nets: eps warm-up over the first epoch, cosine LR
        model_r = fresh()
        t0 = time.perf_counter()
        rep = _bastion_trainer(a, a.epochs, warmup=1, schedule="cosine").fit(model_r, (x, y))
        results["bastion_recipe"] = {
            "total_seconds": time.perf_counter() - t0,
            "epoch_seconds": [h.seconds for h in rep.history],
            "clean_accuracy": accuracy(model_r, xt, yt),
            "robust_accuracy_pgd40": _robust(model_r, xt, yt, a.eps),
        }
        print("bastion_recipe", json.dumps(results["bastion_recipe"]), flush=True)
    import art

    results["versions"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "art": art.__version__,
        "threads": a.threads,
    }
    print(json.dumps({k: v for k, v in results.items() if k.startswith("ratio")}), flush=True)
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
