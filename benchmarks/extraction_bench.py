"""Extraction benchmark: bastion against adversarial-robustness-toolbox on the same victims.

Run it in the benchmark venv (``bash benchmarks/setup_venv.sh`` creates it)::

    nice .bench-venv/bin/python benchmarks/extraction_bench.py --budgets 1000,5000,10000

Victims and data (nothing downloads):

- **MNIST CNN** — the evasion benchmark's seeded CNN (trained on the first 8,000 MNIST test
  images, cached under ``bench-out/``). The attacker's pool is the other 9,000 non-evaluation
  images plus a copy of each shifted one pixel to the right (18,000 natural-looking inputs, so a
  10,000-query budget can be spent); fidelity is measured on the last 1,000 images, which neither
  the victim nor the attacker saw.
- **digits MLP** (64-16-10, ReLU) — the one architecture ART's FunctionallyEquivalentExtraction
  applies to (two dense layers, ReLU, logits); bastion's Knockoff Nets runs beside it.
- **digits logistic regression** — bastion's equation solving (Tramèr 2016; ART has none) beside
  both libraries' Knockoff Nets.

Each library gets the same victim, pool, budget and surrogate: the same architecture,
initialised from the same seed, Adam, the same batch size and epochs, trained once on all the
answers (bastion ``rounds=1``). The learning rate is each library's choice: ART's is constant
(``--lr``); bastion's (``--recipe own``, the default) peaks at 3 × ``--lr`` and decays to zero
along a cosine; ``--recipe equal`` gives bastion ART's constant rate. Copycat CNN trains on
the victim's labels; Knockoff Nets on its probabilities (ART's victim is given a softmax output
so that its ``use_probability=True`` receives probabilities, as from a prediction API).
Fidelity (label agreement with the victim on held-out data), queries (rows the victim was
asked to classify, counted by the same wrapper for both libraries) and wall-clock seconds of
the whole extraction are measured here, the same way for both.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import signal
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import CountingNet, SmallCNN, TrainConfig, mnist_split, predict, train_cnn
from torch import nn

from bastion.attacks.extraction import CopycatCNN, EquationSolving, KnockoffNets, black_box
from bastion.data import load_digits
from bastion.models import TorchClassifier
from bastion.models.zoo import small_mlp, train_classifier


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class TimeLimit(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def _raise(signum: int, frame: Any) -> None:
        raise TimeLimit(f"did not finish within {seconds}s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def fidelity(surrogate: nn.Module, victim: nn.Module, x: torch.Tensor) -> float:
    return float((predict(surrogate, x) == predict(victim, x)).float().mean())


def seeded(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


# -- the two libraries ----------------------------------------------------------------------
def run_bastion(
    kind: str,
    victim_net: nn.Module,
    input_shape: tuple[int, ...],
    pool: torch.Tensor,
    budget: int,
    factory: Callable[[], nn.Module],
    epochs: int,
    lr: float,
    seed: int,
    recipe: str = "equal",
) -> tuple[nn.Module, int, float]:
    """``recipe="equal"``: ART's recipe (constant ``lr``); ``"own"``: bastion's, the peak
    learning rate 3 × ``lr`` decayed to zero along a cosine, same epochs and batches. ``kind``
    "knockoff-adaptive" is Knockoff Nets with the adaptive bandit policy (10 k-means groups)."""
    counting = CountingNet(victim_net)
    victim = black_box(TorchClassifier(counting, input_shape=input_shape, num_classes=10))
    common: dict[str, Any] = {
        "query_budget": budget,
        "rounds": 1,
        "epochs": epochs,
        "lr": lr,
        "train_batch_size": 64,
        "batch_size": 256,
        "seed": seed,
        "surrogate": lambda shape, k: seeded(factory, seed),
    }
    if recipe == "own":
        common.update(lr=3 * lr, schedule="cosine")
    if kind == "knockoff-adaptive":
        common["strategy"] = "adaptive"
    attack = CopycatCNN(**common) if kind == "copycat" else KnockoffNets(**common)
    start = time.perf_counter()
    res = attack.extract(victim, x_pool=pool)
    seconds = time.perf_counter() - start
    if res.surrogate is None:
        raise RuntimeError("no surrogate")
    return res.surrogate, counting.rows, seconds


def run_art(
    kind: str,
    victim_net: nn.Module,
    input_shape: tuple[int, ...],
    pool: torch.Tensor,
    budget: int,
    factory: Callable[[], nn.Module],
    epochs: int,
    lr: float,
    seed: int,
) -> tuple[nn.Module, int, float]:
    from art.attacks.extraction import CopycatCNN as ArtCopycat
    from art.attacks.extraction import KnockoffNets as ArtKnockoff
    from art.estimators.classification import PyTorchClassifier

    counting = CountingNet(victim_net)
    soft = kind == "knockoff"
    served = nn.Sequential(counting, nn.Softmax(dim=1)) if soft else counting
    victim = PyTorchClassifier(
        served,
        loss=nn.CrossEntropyLoss(),
        input_shape=input_shape,
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )
    thief_net = seeded(factory, seed)
    thief = PyTorchClassifier(
        thief_net,
        loss=nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(thief_net.parameters(), lr=lr),
        input_shape=input_shape,
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )
    np.random.seed(seed)
    torch.manual_seed(seed)
    if kind == "copycat":
        attack = ArtCopycat(
            victim, batch_size_fit=64, batch_size_query=256, nb_epochs=epochs, nb_stolen=budget
        )
    else:
        attack = ArtKnockoff(
            victim,
            batch_size_fit=64,
            batch_size_query=256,
            nb_epochs=epochs,
            nb_stolen=budget,
            sampling_strategy="random",
            verbose=False,
            use_probability=True,
        )
    start = time.perf_counter()
    stolen = attack.extract(pool.numpy(), thieved_classifier=thief)
    seconds = time.perf_counter() - start
    return stolen.model, counting.rows, seconds


# -- victims --------------------------------------------------------------------------------
def mnist_case(cache: Path) -> dict[str, Any]:
    split = mnist_split(8000)
    cnn = train_cnn(split, TrainConfig(), cache, log)
    rest_x = split.x_test
    natural = torch.cat([split.x_train, rest_x[:1000]])
    shifted = torch.roll(natural, shifts=1, dims=3)
    shifted[..., 0] = 0.0
    pool = torch.cat([natural, shifted])
    return {
        "victim": cnn,
        "shape": (1, 28, 28),
        "pool": pool,
        "x_eval": rest_x[1000:],
        "factory": SmallCNN,
        "epoch_factor": 1,
    }


def digits_mlp_case(hidden: int = 16) -> dict[str, Any]:
    data = load_digits()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    x, y = data.x[perm].reshape(-1, 64), data.y[perm]
    net = train_classifier(
        small_mlp(64, 10, hidden=hidden), x[:1000], y[:1000], epochs=30, lr=5e-3, seed=0
    )
    return {
        "victim": net,
        "shape": (64,),
        "pool": x[:1400],
        "x_eval": x[1400:],
        "factory": lambda: small_mlp(64, 10, hidden=hidden),
        "epoch_factor": 5,  # a 1,000-row data set: 5x the epochs for the same number of steps
    }


def digits_lr_case() -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    from bastion.models import from_sklearn

    data = load_digits()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    x, y = data.x[perm].reshape(-1, 64), data.y[perm]
    est = LogisticRegression(max_iter=3000).fit(x[:1000].double().numpy(), y[:1000].numpy())
    clf = from_sklearn(est)
    module = clf.module  # type: ignore[attr-defined]
    return {
        "victim": module,
        "shape": (64,),
        "pool": x[:1400],
        "x_eval": x[1400:],
        "factory": lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 10)),
        "clf": clf,
    }


def run_fee(case: dict[str, Any], hidden: int, seconds: int, seed: int) -> dict[str, Any]:
    from art.attacks.extraction import FunctionallyEquivalentExtraction
    from art.estimators.classification import PyTorchClassifier

    counting = CountingNet(case["victim"])
    victim = PyTorchClassifier(
        counting,
        loss=nn.CrossEntropyLoss(),
        input_shape=(64,),
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )
    np.random.seed(seed)
    start = time.perf_counter()
    row: dict[str, Any] = {"library": "art", "attack": "functionally-equivalent"}
    try:
        with time_limit(seconds), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fee = FunctionallyEquivalentExtraction(victim, num_neurons=hidden)
            stolen = fee.extract(case["pool"].numpy())
        pred = stolen.predict(case["x_eval"].numpy()).argmax(1)
        ref = predict(case["victim"], case["x_eval"]).numpy()
        row["fidelity"] = float((pred == ref).mean())
    except TimeLimit as exc:
        row["fidelity"] = None
        row["note"] = str(exc)
    row["queries"] = counting.rows
    row["seconds"] = time.perf_counter() - start
    return row


# -- main -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budgets", default="1000,5000,10000")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seeds", default="0,1,2", help="seeds (pool sample, init, order)")
    ap.add_argument(
        "--large-seeds",
        default=None,
        help="seeds for budgets above the smallest (default: --seeds)",
    )
    ap.add_argument(
        "--recipe",
        choices=("own", "equal"),
        default="own",
        help="bastion's training recipe: its own (3x lr, cosine decay) or ART's (equal)",
    )
    ap.add_argument(
        "--adaptive",
        action="store_true",
        help="add bastion's adaptive Knockoff at the smallest budget",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fee-seconds", type=int, default=300)
    ap.add_argument("--skip-fee", action="store_true")
    ap.add_argument(
        "--cases",
        default="mnist-cnn,digits-mlp,digits-lr",
        help="victims to run (rerun a subset: e.g. mnist-cnn)",
    )
    ap.add_argument("--attacks", default="copycat,knockoff", help="learning-based attacks to run")
    ap.add_argument("--cache", type=Path, default=Path("bench-out"))
    ap.add_argument("--out", type=Path, default=Path("bench-out/extraction.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    budgets = [int(b) for b in args.budgets.split(",") if b]
    rows: list[dict[str, Any]] = []

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        fid = "—" if row.get("fidelity") is None else f"{row['fidelity']:.4f}"
        log(
            f"{row['victim']:>10} {row['attack']:>24} {row['library']:>8} budget "
            f"{row.get('budget', '—')!s:>6}: fidelity {fid} queries {row['queries']} "
            f"{row['seconds']:.2f}s {row.get('note', '')}"
        )

    seeds = [int(v) for v in args.seeds.split(",") if v]
    large_seeds = (
        seeds if args.large_seeds is None else [int(v) for v in args.large_seeds.split(",")]
    )

    def run_bastion_recipe(*a: Any) -> tuple[nn.Module, int, float]:
        return run_bastion(*a, recipe=args.recipe)

    libs: tuple[tuple[str, Callable[..., tuple[nn.Module, int, float]]], ...] = (
        ("bastion", run_bastion_recipe),
        ("art", run_art),
    )
    wanted = {c.strip() for c in args.cases.split(",") if c.strip()}
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    cases = [("mnist-cnn", mnist_case(args.cache))]
    if "digits-mlp" in wanted:
        cases.append(("digits-mlp", digits_mlp_case()))
    warm = cases[0][1]
    cases = [(name, case) for name, case in cases if name in wanted]
    for _, fn in libs:  # warm-up (allocator, kernels), not recorded
        fn(
            "copycat",
            warm["victim"],
            warm["shape"],
            warm["pool"],
            200,
            warm["factory"],
            1,
            args.lr,
            0,
        )
    for name, case in cases:
        case_budgets = budgets if name == "mnist-cnn" else [min(budgets)]
        for budget in case_budgets:
            kinds = list(attacks)
            if args.adaptive and budget == min(budgets):
                kinds.append("knockoff-adaptive")
            for kind in kinds:
                run_seeds = seeds if budget == min(budgets) else large_seeds
                for i, seed in enumerate(run_seeds):
                    # alternate which library goes first: load on a shared machine hits both
                    for lib, fn in libs if i % 2 == 0 else libs[::-1]:
                        if kind == "knockoff-adaptive" and lib == "art":
                            continue  # ART's adaptive policy needs the pool's true labels
                        sur, queries, secs = fn(
                            kind,
                            case["victim"],
                            case["shape"],
                            case["pool"],
                            budget,
                            case["factory"],
                            args.epochs * case["epoch_factor"],
                            args.lr,
                            seed,
                        )
                        record(
                            {
                                "victim": name,
                                "attack": kind,
                                "library": lib,
                                "budget": budget,
                                "seed": seed,
                                "fidelity": fidelity(sur, case["victim"], case["x_eval"]),
                                "queries": queries,
                                "seconds": secs,
                            }
                        )
        if name == "digits-mlp" and not args.skip_fee:
            row = run_fee(case, 16, args.fee_seconds, seeds[0])
            record({"victim": name, **row})

    if "digits-lr" in wanted:
        _digits_lr(args, budgets, seeds, libs, record)

    doc = {
        "argv": sys.argv[1:],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": args.threads,
        "epochs": args.epochs,
        "lr": args.lr,
        "recipe": args.recipe,
        "rows": rows,
    }
    try:
        import art

        doc["art"] = art.__version__
    except ImportError:  # pragma: no cover
        doc["art"] = None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2))
    print(markdown(rows))
    log(f"wrote {args.out}")
    return 0


def _digits_lr(
    args: argparse.Namespace,
    budgets: list[int],
    seeds: list[int],
    libs: tuple[tuple[str, Callable[..., tuple[nn.Module, int, float]]], ...],
    record: Callable[[dict[str, Any]], None],
) -> None:
    """Equation solving and both Knockoffs on the digits logistic regression."""
    lr_case = digits_lr_case()
    counting = CountingNet(lr_case["victim"])
    victim = black_box(TorchClassifier(counting, input_shape=(64,), num_classes=10))
    start = time.perf_counter()
    res = EquationSolving(query_budget=min(budgets)).extract(victim)
    secs = time.perf_counter() - start
    if res.surrogate is None:
        raise RuntimeError("no surrogate")
    x_eval = lr_case["x_eval"].double()
    record(
        {
            "victim": "digits-lr",
            "attack": "equation-solving",
            "library": "bastion",
            "budget": min(budgets),
            "fidelity": fidelity(res.surrogate, lr_case["victim"], x_eval),
            "queries": counting.rows,
            "seconds": secs,
        }
    )
    for lib, fn in libs:
        sur, queries, secs = fn(
            "knockoff",
            lr_case["victim"],
            (64,),
            lr_case["pool"],
            min(budgets),
            lr_case["factory"],
            args.epochs * 3,
            args.lr * 10,
            seeds[0],
        )
        record(
            {
                "victim": "digits-lr",
                "attack": "knockoff",
                "library": lib,
                "budget": min(budgets),
                "fidelity": fidelity(sur, lr_case["victim"], lr_case["x_eval"]),
                "queries": queries,
                "seconds": secs,
            }
        )


def markdown(rows: list[dict[str, Any]]) -> str:
    """One line per (victim, attack, budget, library): mean fidelity (min–max over seeds),
    queries, median seconds."""
    groups: dict[tuple[str, str, Any, str], list[dict[str, Any]]] = {}
    for r in rows:
        key = (r["victim"], r["attack"], r.get("budget", "—"), r["library"])
        groups.setdefault(key, []).append(r)
    lines = [
        "| victim | attack | budget | library | fidelity (mean, min–max) | queries | seconds "
        "(median) | runs |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for (victim, attack, budget, lib), rs in groups.items():
        fids = [r["fidelity"] for r in rs if r.get("fidelity") is not None]
        if fids:
            fid = f"{statistics.mean(fids):.4f} ({min(fids):.3f}–{max(fids):.3f})"
        else:
            fid = "—"
        secs = statistics.median(r["seconds"] for r in rs)
        notes = "; ".join(sorted({r["note"] for r in rs if r.get("note")}))
        queries = max(r["queries"] for r in rs)
        lines.append(
            f"| {victim} | {attack} | {budget} | {lib} | {fid} | {queries} | {secs:.2f}"
            f"{' (' + notes + ')' if notes else ''} | {len(rs)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
