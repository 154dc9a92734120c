"""Evasion benchmark: bastion against adversarial-robustness-toolbox, torchattacks and foolbox.

Run it in the benchmark venv (``bash benchmarks/setup_venv.sh`` creates it)::

    nice .bench-venv/bin/python benchmarks/evasion.py --n-attack 1000 --n-cw 200 --n-hsj 100 \
        --repeats 5 --threads 1

(``benchmarks/RESULTS-evasion.md`` records that run.)

A small seeded CNN is trained on the first 8,000 MNIST test images (cached under ``bench-out/``
by a hash of its training config) and 1,000 of the remaining 2,000 are attacked by every
library at identical parameters (``PARAMS`` below; each library's exact arguments are written
to the JSON output). Every output is measured here, the same way for every library, on the
same network: robust accuracy, success rate, median L2 / L∞ norm of the successful
perturbations, queries per sample (rows the network was asked to classify), and wall-clock
seconds (median of ``--repeats`` runs for PGD, ``--slow-repeats`` for the others; the runs of
the libraries are interleaved so that load on a shared machine hits them alike).

The PGD compute bound is ``steps`` × one forward and backward pass (gradient with respect to
the input, cross-entropy loss) of the same batch on the same network, timed as a loop of
``steps`` passes inside the same interleaved repeats as the libraries (median of repeats): no
PGD implementation can beat it without changing the arithmetic.

Attacks a library does not offer are reported as such (foolbox has no Square attack,
torchattacks no HopSkipJump). Bastion's attacks are imported lazily: one not written yet is
reported as missing and the rest still runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from _common import (
    CountingNet,
    TrainConfig,
    attack_metrics,
    mnist_split,
    predict,
    sync,
    train_cnn,
)
from torch import nn

ATTACKS = ("pgd", "cw", "square", "hsj")
LIBS = ("bastion", "art", "torchattacks", "foolbox")
PEERS = ("art", "torchattacks", "foolbox")

#: the shared parameters; flags may override the sample counts and budgets
PARAMS: dict[str, dict[str, Any]] = {
    "pgd": {"norm": "linf", "eps": 0.3, "steps": 40, "step_size": 0.01, "random_start": False,
            "loss": "cross-entropy"},
    # torchattacks's CW has no binary search (one fixed c), so the common setting is a
    # single search step: c fixed, Adam (ART: its own gradient descent with halving/doubling
    # of the learning rate, max 5 each), confidence 0.
    "cw": {"norm": "l2", "binary_search_steps": 1, "steps": 100, "lr": 0.1, "c": 1.0,
           "confidence": 0.0},
    "square": {"norm": "linf", "eps": 0.3, "max_queries": 1000, "p_init": 0.8,
               "restarts": 1, "loss": "margin"},
    # bastion takes a query budget; ART and foolbox take iterations. `iterations` is chosen
    # so that the peers spend about the same number of queries; the queries actually spent
    # are measured and reported for every library.
    "hsj": {"norm": "l2", "max_queries": 1000, "iterations": 5, "init_evals": 100,
            "max_evals": 10000, "stepsize_search": "geometric_progression", "gamma": 1.0},
}

Runner = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Unavailable(Exception):
    """The library does not offer this attack (or bastion's is not written yet)."""


# ---------------------------------------------------------------------------------------------
# one builder per library: (attack, params, model, device, batch_size) -> (runner, exact args)
# ---------------------------------------------------------------------------------------------
def build_bastion_full(attack: str, p: dict[str, Any], model: CountingNet, device: str,
                       batch: int) -> tuple[Runner, dict[str, Any]]:
    """Bastion's PGD without per-sample early stopping: every sample takes all 40 steps."""
    if attack != "pgd":
        raise Unavailable("bastion-full differs from bastion only for pgd")
    return build_bastion(attack, p, model, device, batch, early_stop=False)


def build_bastion(attack: str, p: dict[str, Any], model: CountingNet, device: str,
                  batch: int, early_stop: bool = True) -> tuple[Runner, dict[str, Any]]:
    from bastion.models import TorchClassifier

    clf = TorchClassifier(model, input_shape=(1, 28, 28), num_classes=10, bounds=(0.0, 1.0))
    try:
        if attack == "pgd":
            from bastion.attacks.evasion.pgd import PGD

            args: dict[str, Any] = dict(norm="linf", eps=p["eps"], steps=p["steps"],
                                        step_size=p["step_size"],
                                        random_start=p["random_start"], batch_size=batch,
                                        early_stop=early_stop)
            atk: Any = PGD(**args)
        elif attack == "cw":
            from bastion.attacks.evasion.cw import CarliniWagnerL2

            args = dict(confidence=p["confidence"], c=p["c"],
                        binary_search_steps=p["binary_search_steps"], steps=p["steps"],
                        lr=p["lr"], batch_size=batch)
            atk = CarliniWagnerL2(**args)
        elif attack == "square":
            from bastion.attacks.evasion.square import Square

            args = dict(norm="linf", eps=p["eps"], max_queries=p["max_queries"],
                        p_init=p["p_init"], loss=p["loss"], batch_size=batch, seed=0)
            atk = Square(**args)
        elif attack == "hsj":
            from bastion.attacks.evasion.hopskipjump import HopSkipJump

            args = dict(norm="l2", max_queries=p["max_queries"], max_num_evals=p["max_evals"],
                        init_num_evals=p["init_evals"], init_size=100, gamma=p["gamma"],
                        batch_size=batch, seed=0)
            atk = HopSkipJump(**args)
        else:
            raise Unavailable(attack)
    except ImportError as exc:
        raise Unavailable(f"bastion has no {attack} yet ({exc})") from exc

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return atk.generate(clf, x, y).x_adv

    return run, {"class": type(atk).__name__, **args}


def build_art(attack: str, p: dict[str, Any], model: CountingNet, device: str,
              batch: int) -> tuple[Runner, dict[str, Any]]:
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28),
                            nb_classes=10, clip_values=(0.0, 1.0),
                            device_type="gpu" if device == "cuda" else "cpu")
    if attack == "pgd":
        from art.attacks.evasion import ProjectedGradientDescent as Cls

        args: dict[str, Any] = dict(norm=np.inf, eps=p["eps"], eps_step=p["step_size"],
                                    max_iter=p["steps"], num_random_init=0, batch_size=batch,
                                    verbose=False)
    elif attack == "cw":
        from art.attacks.evasion import CarliniL2Method as Cls

        args = dict(confidence=p["confidence"], learning_rate=p["lr"],
                    binary_search_steps=p["binary_search_steps"], max_iter=p["steps"],
                    initial_const=p["c"], max_halving=5, max_doubling=5, batch_size=batch,
                    verbose=False)
    elif attack == "square":
        from art.attacks.evasion import SquareAttack as Cls

        # ART's max_iter counts iterations of one query per sample, after one initial query
        args = dict(norm=np.inf, eps=p["eps"], max_iter=p["max_queries"] - 1,
                    p_init=p["p_init"], nb_restarts=p["restarts"], batch_size=batch,
                    verbose=False)
    elif attack == "hsj":
        from art.attacks.evasion import HopSkipJump as Cls

        args = dict(norm=2, max_iter=p["iterations"], max_eval=p["max_evals"],
                    init_eval=p["init_evals"], init_size=100, batch_size=64, verbose=False)
    else:
        raise Unavailable(attack)
    atk = Cls(clf, **args)

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # one-hot labels, as ART documents for classifiers
        y_np = np.eye(10, dtype=np.float32)[y.cpu().numpy()]
        out = atk.generate(x=x.cpu().numpy(), y=y_np)
        return torch.from_numpy(np.asarray(out, dtype=np.float32))

    shown = {k: ("inf" if v is np.inf else v) for k, v in args.items()}
    return run, {"class": Cls.__name__, **shown}


def build_torchattacks(attack: str, p: dict[str, Any], model: CountingNet, device: str,
                       batch: int) -> tuple[Runner, dict[str, Any]]:
    import torchattacks as ta

    if attack == "pgd":
        args: dict[str, Any] = dict(eps=p["eps"], alpha=p["step_size"], steps=p["steps"],
                                    random_start=p["random_start"])
        atk: Any = ta.PGD(model, **args)
    elif attack == "cw":
        if p["binary_search_steps"] != 1:
            warnings.warn("torchattacks CW has no binary search: runs with c fixed",
                          stacklevel=1)
        args = dict(c=p["c"], kappa=p["confidence"], steps=p["steps"], lr=p["lr"])
        atk = ta.CW(model, **args)
    elif attack == "square":
        args = dict(norm="Linf", eps=p["eps"], n_queries=p["max_queries"],
                    n_restarts=p["restarts"], p_init=p["p_init"], loss=p["loss"],
                    resc_schedule=True, seed=0, verbose=False)
        atk = ta.Square(model, **args)
    else:
        raise Unavailable(f"torchattacks has no {attack}")

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        outs = [atk(x[i : i + batch], y[i : i + batch]) for i in range(0, x.shape[0], batch)]
        return torch.cat(outs)

    return run, {"class": type(atk).__name__, **args}


def build_foolbox(attack: str, p: dict[str, Any], model: CountingNet, device: str,
                  batch: int) -> tuple[Runner, dict[str, Any]]:
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device=device)
    eps: float | None
    if attack == "pgd":
        args: dict[str, Any] = dict(abs_stepsize=p["step_size"], steps=p["steps"],
                                    random_start=p["random_start"])
        atk: Any = fb.attacks.LinfPGD(**args)
        eps = p["eps"]
    elif attack == "cw":
        args = dict(binary_search_steps=p["binary_search_steps"], steps=p["steps"],
                    stepsize=p["lr"], confidence=p["confidence"], initial_const=p["c"],
                    abort_early=True)
        atk = fb.attacks.L2CarliniWagnerAttack(**args)
        eps = None
    elif attack == "hsj":
        args = dict(steps=p["iterations"], initial_gradient_eval_steps=p["init_evals"],
                    max_gradient_eval_steps=p["max_evals"],
                    stepsize_search=p["stepsize_search"], gamma=p["gamma"], constraint="l2")
        atk = fb.attacks.HopSkipJumpAttack(**args)
        eps = None
    else:
        raise Unavailable(f"foolbox has no {attack}")

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        outs = []
        for i in range(0, x.shape[0], batch):
            _, clipped, _ = atk(fmodel, x[i : i + batch], y[i : i + batch], epsilons=eps)
            outs.append(clipped)
        return torch.cat(outs)

    return run, {"class": type(atk).__name__, **args, "epsilons": eps}


BUILDERS = {"bastion": build_bastion, "bastion-full": build_bastion_full, "art": build_art,
            "torchattacks": build_torchattacks, "foolbox": build_foolbox}


# ---------------------------------------------------------------------------------------------
def seed_all(seed: int = 0) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def compute_bound_pass(net: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int,
                       device: str) -> float:
    """Seconds for ``steps`` forward+backward passes (input gradient) of batch ``x``."""
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        xg = x.clone().requires_grad_(True)
        loss = F.cross_entropy(net(xg), y, reduction="sum")
        torch.autograd.grad(loss, xg)
    sync(device)
    return time.perf_counter() - start


def run_attack(attack: str, libs: list[str], net: nn.Module, x: torch.Tensor, y: torch.Tensor,
               args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    p = dict(PARAMS[attack])
    repeats = args.repeats if attack == "pgd" else args.slow_repeats
    x_dev, y_dev = x.to(args.device), y.to(args.device)
    batch = min(args.batch_size or x.shape[0], x.shape[0])
    model = CountingNet(net).eval()
    runners: dict[str, Runner] = {}
    entry: dict[str, Any] = {"params": p, "n": int(x.shape[0]), "repeats": repeats,
                             "batch_size": batch, "libs": {}}
    for lib in libs:
        try:
            runner, exact = BUILDERS[lib](attack, p, model, args.device, batch)
        except Unavailable as exc:
            entry["libs"][lib] = {"status": "n/a", "reason": str(exc)}
            log(f"{attack:7s} {lib:12s} n/a: {exc}")
            continue
        runners[lib] = runner
        entry["libs"][lib] = {"status": "ok", "args": exact, "times": []}
    if attack == "pgd" and runners:  # warm-up on a few samples, untimed
        for runner in runners.values():
            seed_all()
            runner(x_dev[:8], y_dev[:8])
    bound_times: list[float] = []
    if attack == "pgd":
        compute_bound_pass(net, x_dev, y_dev, 1, args.device)  # warm-up
    outputs: dict[str, torch.Tensor] = {}
    for r in range(repeats):
        # rotate the order every repeat so that a trend in the machine's load hits all alike
        order: list[str] = list(runners) + (["compute bound"] if attack == "pgd" else [])
        order = order[r % len(order):] + order[: r % len(order)]
        for lib in order:
            if lib == "compute bound":
                bound_times.append(compute_bound_pass(net, x_dev, y_dev, p["steps"],
                                                      args.device))
                log(f"{attack:7s} {lib:13s} repeat {r + 1}/{repeats}: {bound_times[-1]:.2f}s")
                continue
            if lib not in runners:
                continue
            runner = runners[lib]
            res = entry["libs"][lib]
            seed_all()
            model.rows = 0
            sync(args.device)
            start, cpu_start = time.perf_counter(), time.process_time()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    x_adv = runner(x_dev, y_dev)
            except Exception as exc:  # report a library's failure, keep benchmarking the rest
                res.update(status="error", error=f"{type(exc).__name__}: {exc}")
                log(f"{attack:7s} {lib:12s} ERROR {type(exc).__name__}: {exc}")
                del runners[lib]
                continue
            sync(args.device)
            res["times"].append(time.perf_counter() - start)
            res.setdefault("cpu_times", []).append(time.process_time() - cpu_start)
            res["queries_per_sample"] = model.rows / x.shape[0]
            outputs[lib] = x_adv.detach().cpu()
            log(f"{attack:7s} {lib:12s} repeat {r + 1}/{repeats}: {res['times'][-1]:.2f}s")
    for lib, x_adv in outputs.items():
        res = entry["libs"][lib]
        res["seconds"] = statistics.median(res["times"])
        res["cpu_seconds"] = statistics.median(res["cpu_times"])
        res.update(attack_metrics(
            net, x, y, x_adv,
            eps_linf=p.get("eps") if p["norm"] == "linf" else None,
            eps_l2=args.l2_eps if p["norm"] == "l2" else None,
        ))
    if bound_times:
        med = statistics.median(bound_times)
        entry["compute_bound"] = {"seconds": med, "times": bound_times, "steps": p["steps"],
                                  "fwd_bwd_seconds": med / p["steps"]}
    entry["ratios"] = ratios(attack, entry)
    entry["targets"] = targets(attack, entry)
    return entry


def _ok(entry: dict[str, Any], lib: str) -> dict[str, Any] | None:
    res = entry["libs"].get(lib)
    return res if res and res.get("status") == "ok" and "seconds" in res else None


def ratios(attack: str, entry: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    b = _ok(entry, "bastion")
    if b is None:
        return out
    for peer in PEERS:
        r = _ok(entry, peer)
        if r is not None and r["seconds"] > 0:
            out[f"bastion/{peer}"] = b["seconds"] / r["seconds"]
        if r is not None and r.get("cpu_seconds", 0) > 0 and "cpu_seconds" in b:
            # process CPU time: fairer than wall time on a shared, loaded machine
            out[f"bastion/{peer} (cpu)"] = b["cpu_seconds"] / r["cpu_seconds"]
            if attack == "hsj":  # at equal queries: CPU seconds per query
                out[f"bastion/{peer} (cpu per query)"] = (
                    b["cpu_seconds"] / b["queries_per_sample"]
                ) / (r["cpu_seconds"] / r["queries_per_sample"])
    if "compute_bound" in entry:
        out["bastion/compute_bound"] = b["seconds"] / entry["compute_bound"]["seconds"]
    if attack == "pgd":  # fastest repeat: less sensitive to load from other processes
        for peer in PEERS:
            r = _ok(entry, peer)
            if r is not None:
                out[f"bastion/{peer} (fastest repeat)"] = min(b["times"]) / min(r["times"])
        if "compute_bound" in entry:
            out["bastion/compute_bound (fastest repeat)"] = (
                min(b["times"]) / min(entry["compute_bound"]["times"]))
    return out


def _strength(attack: str, res: dict[str, Any]) -> float:
    """Robust accuracy that the targets compare (at the L2 eps for minimum-norm attacks)."""
    key = "robust_accuracy_at_l2" if attack in ("cw", "hsj") else "robust_accuracy"
    return float(res[key])


def targets(attack: str, entry: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    b = _ok(entry, "bastion")
    peers = [r for r in (_ok(entry, p) for p in PEERS) if r is not None]
    if b is None or not peers:
        return out
    best = min(_strength(attack, r) for r in peers)
    out["robust_accuracy"] = {"bastion": _strength(attack, b), "best_peer": best,
                              "pass": _strength(attack, b) <= best + 0.005}
    if attack == "pgd":
        rat = entry["ratios"] if "ratios" in entry else ratios(attack, entry)
        if "bastion/art" in rat:
            out["time_vs_art"] = {"ratio": rat["bastion/art"], "bar": 0.5,
                                  "pass": rat["bastion/art"] <= 0.5}
        if "bastion/torchattacks" in rat:
            out["time_vs_torchattacks"] = {"ratio": rat["bastion/torchattacks"], "bar": 1.0,
                                           "pass": rat["bastion/torchattacks"] <= 1.0}
        if "bastion/compute_bound" in rat:
            out["time_vs_compute_bound"] = {"ratio": rat["bastion/compute_bound"], "bar": 1.3,
                                            "pass": rat["bastion/compute_bound"] <= 1.3}
    return out


# ---------------------------------------------------------------------------------------------
def _fmt(v: Any, spec: str = ".3f") -> str:
    return "–" if v is None else format(v, spec)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| attack | library | n | repeats | seconds | queries/sample | robust acc | "
        "success rate | median L2 | median L∞ | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for attack, entry in report["attacks"].items():
        for lib, res in entry["libs"].items():
            if res.get("status") != "ok" or "seconds" not in res:
                why = res.get("reason") or res.get("error") or "no result"
                lines.append(f"| {attack} | {lib} | {entry['n']} | – | – | – | – | – | – | – "
                             f"| {res.get('status')}: {why} |")
                continue
            ra = res["robust_accuracy"]
            note = []
            if "robust_accuracy_at_l2" in res:
                note.append(f"robust acc at L2≤{res['eps_l2']}: "
                            f"{100 * res['robust_accuracy_at_l2']:.1f}%")
            if res.get("within_eps") is False:
                note.append(f"EXCEEDS eps (max L∞ {res['max_linf']:.4f})")
            if not res["in_bounds"]:
                note.append("out of bounds")
            lines.append(
                f"| {attack} | {lib} | {res['n']} | {len(res['times'])} | "
                f"{res['seconds']:.2f} | {res['queries_per_sample']:.0f} | {100 * ra:.1f}% | "
                f"{100 * res['success_rate']:.1f}% | {_fmt(res['median_l2'])} | "
                f"{_fmt(res['median_linf'])} | {'; '.join(note)} |")
        if "compute_bound" in entry:
            cb = entry["compute_bound"]
            lines.append(f"| {attack} | compute bound | {entry['n']} | "
                         f"{len(cb['times'])} | {cb['seconds']:.2f} | – | – | – | – | – "
                         f"| {cb['steps']} × fwd+bwd {cb['fwd_bwd_seconds'] * 1e3:.1f} ms |")
    lines += ["", "| attack | ratio | value |", "|---|---|---:|"]
    for attack, entry in report["attacks"].items():
        for k, v in entry["ratios"].items():
            lines.append(f"| {attack} | {k} | {v:.2f} |")
    lines += ["", "| attack | target | bastion | bar | pass |", "|---|---|---:|---:|---|"]
    for attack, entry in report["attacks"].items():
        for k, t in entry["targets"].items():
            if k == "robust_accuracy":
                lines.append(f"| {attack} | robust acc ≤ best peer + 0.5 pt | "
                             f"{100 * t['bastion']:.1f}% | {100 * t['best_peer'] + 0.5:.1f}% "
                             f"| {'yes' if t['pass'] else 'NO'} |")
            else:
                lines.append(f"| {attack} | {k} | {t['ratio']:.2f} | {t['bar']} | "
                             f"{'yes' if t['pass'] else 'NO'} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--n-attack", type=int, default=1000,
                    help="samples attacked by PGD and Square (of the 2,000 held out)")
    ap.add_argument("--n-cw", type=int, default=None, help="samples for C&W (default n-attack)")
    ap.add_argument("--n-hsj", type=int, default=None,
                    help="samples for HopSkipJump (default n-attack)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats of PGD")
    ap.add_argument("--slow-repeats", type=int, default=1,
                    help="timed repeats of C&W, Square and HopSkipJump")
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--libs", default=",".join(LIBS))
    ap.add_argument("--out", default="bench-out/evasion.json")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--batch-size", type=int, default=0,
                    help="batch size given to every library (0: the whole set at once)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--hsj-queries", type=int, default=PARAMS["hsj"]["max_queries"])
    ap.add_argument("--hsj-iterations", type=int, default=PARAMS["hsj"]["iterations"])
    ap.add_argument("--square-queries", type=int, default=PARAMS["square"]["max_queries"])
    ap.add_argument("--cw-steps", type=int, default=PARAMS["cw"]["steps"])
    ap.add_argument("--cw-binary-steps", type=int, default=PARAMS["cw"]["binary_search_steps"])
    ap.add_argument("--cw-c", type=float, default=PARAMS["cw"]["c"])
    ap.add_argument("--cw-lr", type=float, default=PARAMS["cw"]["lr"])
    ap.add_argument("--l2-eps", type=float, default=1.5,
                    help="L2 radius at which robust accuracy of C&W and HSJ is also reported")
    ap.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    ap.add_argument("--freeze-params", action="store_true",
                    help="set requires_grad=False on the weights (default: leave the trained "
                         "model as a user hands it over, weights requiring grad)")
    ap.add_argument("--render", metavar="JSON",
                    help="only print the Markdown tables of an earlier run's JSON output")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    args.attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    args.libs = [lib.strip() for lib in args.libs.split(",") if lib.strip()]
    for a in args.attacks:
        if a not in ATTACKS:
            ap.error(f"unknown attack {a!r}; choose from {', '.join(ATTACKS)}")
    for lib in args.libs:
        if lib not in BUILDERS:
            ap.error(f"unknown library {lib!r}; choose from {', '.join(BUILDERS)}")
    if not 1 <= args.n_attack <= 2000:
        ap.error("--n-attack must be between 1 and 2000 (the held-out MNIST images)")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(msg: str) -> None:
        if not args.quiet:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    if args.render:
        earlier = json.loads(Path(args.render).read_text())
        for attack, entry in earlier["attacks"].items():
            entry["ratios"] = ratios(attack, entry)
            entry["targets"] = targets(attack, entry)
        print(markdown(earlier))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    PARAMS["hsj"]["max_queries"] = args.hsj_queries
    PARAMS["hsj"]["iterations"] = args.hsj_iterations
    PARAMS["square"]["max_queries"] = args.square_queries
    PARAMS["cw"].update(steps=args.cw_steps, binary_search_steps=args.cw_binary_steps,
                        c=args.cw_c, lr=args.cw_lr)
    out = Path(args.out)
    cfg = TrainConfig(epochs=args.epochs)
    split = mnist_split(cfg.n_train)
    net = train_cnn(split, cfg, out.parent, log)
    if args.freeze_params:
        for prm in net.parameters():
            prm.requires_grad_(False)
    net = net.to(args.device).eval()
    clean_acc = float((predict(net, split.x_test) == split.y_test).float().mean())
    log(f"held-out clean accuracy {100 * clean_acc:.2f}% on {split.x_test.shape[0]} images")

    n_for = {"pgd": args.n_attack, "square": args.n_attack,
             "cw": args.n_cw or args.n_attack, "hsj": args.n_hsj or args.n_attack}
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": _environment(args),
        "model": {"train_config": asdict(cfg), "key": cfg.key(),
                  "held_out_clean_accuracy": clean_acc},
        "attacks": {},
    }
    for attack in args.attacks:
        n = min(n_for[attack], split.x_test.shape[0])
        x, y = split.x_test[:n], split.y_test[:n]
        report["attacks"][attack] = run_attack(attack, args.libs, net, x, y, args, log)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    tmp.replace(out)
    log(f"wrote {out}")
    print(markdown(report))
    return 0


def _environment(args: argparse.Namespace) -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "numpy": np.__version__, "device": args.device,
                           "torch_threads": torch.get_num_threads(),
                           "machine": platform.machine()}
    for mod in ("art", "torchattacks", "foolbox"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception as exc:  # absent or broken: the run says so
            env[mod] = f"unavailable ({type(exc).__name__})"
    return env


if __name__ == "__main__":
    sys.exit(main())
