"""Poisoned-sample detection benchmark: bastion against adversarial-robustness-toolbox.

Run it in the benchmark venv (ART 1.20.1 there, bastion installed editable)::

    nice .bench-venv/bin/python benchmarks/poisoning.py --datasets digits,mnist --repeats 3
    nice .bench-venv/bin/python benchmarks/poisoning.py --datasets digits --rate 0.1

For each data set a BadNets backdoor (3×3 checkerboard, bottom-right, target class 0) is
planted in ``--rate`` of the training set, ``bastion.models.zoo.small_cnn`` is trained on the
poisoned set, and then, on that same poisoned set and that same network,

* bastion's ``ActivationClustering`` and ``SpectralSignatures`` and
* ART's ``ActivationDefence`` (defaults: 2 clusters, PCA to 10 dims, "smaller" analysis) and
  ``SpectralSignatureDefense`` (given the true poison rate as ``expected_pp_poison``, which
  bastion does not need; ``eps_multiplier=1.5``)

flag samples; precision and recall are measured against the ground-truth mask, and seconds
are wall-clock (median of ``--repeats`` runs, interleaved; each run includes the forward
passes for the activations). Every library runs on ``--threads`` threads (torch's, and, through
threadpoolctl, numpy's BLAS and scikit-learn's OpenMP that ART's analysis uses). Before the
first timed run, each of the four runs once untimed
at the default layer (``--warmup``): the first forward passes of a process pay one-off costs
(memory first touched, oneDNN kernels created, ART's lazy imports) that would otherwise land
on whichever runner happens to go first, with ``--repeats 1`` the whole of it.

Two layers are compared. ``default``: each library's own default (bastion: the penultimate
activations, taken before the ReLU that feeds the last linear layer; ART: the output of the
model's last top-level module, i.e. the logits of a Sequential). ``features``: both on the flattened
convolutional features (module "5" of small_cnn); ART is pointed at it by truncating its
``_layer_names`` list (ART always takes the last entry).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bastion.attacks.poisoning import BadNets, attack_success_rate
from bastion.data import load_digits, load_mnist
from bastion.defences.data import ActivationClustering, SpectralSignatures, detection_score
from bastion.models.zoo import accuracy, small_cnn, train_classifier

LAYERS = {"default": None, "features": "5"}


def _data(
    name: str, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    if name == "digits":
        d, n_train, epochs = load_digits(), 1400, 10
    elif name == "mnist":
        d, n_train, epochs = load_mnist(), 8000, 4
    else:
        raise SystemExit(f"unknown data set {name!r}")
    perm = torch.randperm(len(d), generator=torch.Generator().manual_seed(seed))
    x, y = d.x[perm], d.y[perm]
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:], epochs


def _time(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _art_classifier(net: nn.Module, shape: tuple[int, ...], layer: str | None) -> Any:
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(
        model=net,
        loss=nn.CrossEntropyLoss(),
        input_shape=shape,
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )
    if layer is not None:
        names = list(clf._layer_names)
        clf._layer_names = names[: names.index(layer) + 1]
    return clf


def _runners(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, layer: str | None, rate: float
) -> dict[str, Callable[[], torch.Tensor]]:
    from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense

    x_np = x.numpy()
    y_onehot = np.eye(10, dtype=np.float32)[y.numpy()]
    shape = tuple(x.shape[1:])

    def art_ac() -> torch.Tensor:
        clf = _art_classifier(net, shape, layer)
        _, is_clean = ActivationDefence(clf, x_np, y_onehot).detect_poison(
            nb_clusters=2, nb_dims=10, reduce="PCA"
        )
        return torch.tensor(is_clean) == 0

    def art_ss() -> torch.Tensor:
        clf = _art_classifier(net, shape, layer)
        det = SpectralSignatureDefense(
            clf, x_np, y_onehot, batch_size=128, eps_multiplier=1.5, expected_pp_poison=rate
        )
        _, is_clean = det.detect_poison()
        return torch.tensor(is_clean) == 0

    return {
        "bastion.ActivationClustering": lambda: (
            ActivationClustering(net, layer=layer).fit(x, y).flags_
        ),
        "art.ActivationDefence": art_ac,
        "bastion.SpectralSignatures": lambda: SpectralSignatures(net, layer=layer).fit(x, y).flags_,
        "art.SpectralSignatureDefense": art_ss,
    }


def run(name: str, rate: float, repeats: int, seed: int, warmup: int) -> dict[str, Any]:
    x, y, x_test, y_test, epochs = _data(name, seed)
    attack = BadNets(target_class=0, rate=rate, seed=seed)
    poisoned = attack.poison(x, y)
    torch.manual_seed(seed)
    net = train_classifier(
        small_cnn((x.shape[1], x.shape[2], x.shape[3]), 10),
        poisoned.x,
        poisoned.y,
        epochs=epochs,
        lr=3e-3,
        seed=seed,
    )
    out: dict[str, Any] = {
        "dataset": name,
        "n_train": int(x.shape[0]),
        "rate": rate,
        "n_poisoned": poisoned.n_poisoned,
        "clean_accuracy": accuracy(net, x_test, y_test),
        "attack_success_rate": attack_success_rate(
            net, x_test[y_test != 0], attack.apply_trigger, 0
        ),
        "layers": {},
    }
    for i, (layer_key, layer) in enumerate(LAYERS.items()):
        runners = _runners(net, poisoned.x, poisoned.y, layer, rate)
        times: dict[str, list[float]] = {k: [] for k in runners}
        flags: dict[str, torch.Tensor] = {}
        for _ in range(warmup if i == 0 else 0):
            for fn in runners.values():
                fn()
        for _ in range(repeats):
            for key, fn in runners.items():  # interleaved
                seconds, f = _time(fn)
                times[key].append(seconds)
                flags[key] = f
        rows = {}
        for key in runners:
            s = detection_score(flags[key], poisoned.mask, method=key)
            rows[key] = {
                "precision": s.precision,
                "recall": s.recall,
                "f1": s.f1,
                "flagged": s.flagged,
                "seconds": statistics.median(times[key]),
                "seconds_all": times[key],
            }
            print(
                f"{name:6s} {layer_key:8s} {key:30s} P {s.precision:.3f} R {s.recall:.3f} "
                f"flagged {s.flagged:5d} {statistics.median(times[key]):.3f}s",
                flush=True,
            )
        out["layers"][layer_key] = rows
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,mnist")
    parser.add_argument("--rate", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds at the first layer")
    parser.add_argument("--out", type=Path, default=Path("bench-out/poisoning.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import art
    import art.defences.detector.poison  # loads numpy/scikit-learn thread pools first
    from threadpoolctl import threadpool_info, threadpool_limits

    # numpy's BLAS and scikit-learn's OpenMP (ART's analysis) get the same thread count as
    # torch: by default they take every core, which on a shared machine both is not like for
    # like and makes ART's times erratic (threads spinning against other jobs)
    limits = threadpool_limits(limits=args.threads)
    pools = sorted({(p["internal_api"], p["num_threads"]) for p in threadpool_info()})

    results = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "art": art.__version__,
        "threads": args.threads,
        "warmup": args.warmup,
        "thread_pools": pools,
        "seed": args.seed,
        "runs": [
            run(name.strip(), args.rate, args.repeats, args.seed, args.warmup)
            for name in args.datasets.split(",")
        ],
    }
    limits.restore_original_limits()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
