"""Units of work on Ray: LiRA reference-model training on 1 vs 2 workers, per-task times, and a
projection to a 16-GPU cluster.

Each measurement runs in a fresh process holding its own local Ray cluster (``num_cpus`` = the
workers), so the 1- and 2-worker runs are peers; they alternate, and medians are reported.
Cluster start-up is not timed (a platform's cluster is already running); dispatch, shipping
the data once and getting the models back are.

    python benchmarks/ray_units_bench.py --repeats 3 --out bench-out/ray-units.json

The projection uses the measured time of one unit (a block of 4 reference models, as a task on
one Ray worker; one 64-image evasion shard under the audit's APGD-CE + APGD-DLR + Square
ensemble, in-process) and Ray's measured per-task overhead (the round trip of an empty task):
on ``W`` workers, ``U`` units take ``ceil(U / W)`` waves of ``(unit time + overhead)``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

_BLOCK_IMAGES = 64


def _population(n: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    from bastion.data import load_digits

    data = load_digits()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    return data.x[perm][:n], data.y[perm][:n]


def _references(refs: int, epochs: int) -> tuple[Any, torch.Tensor, torch.Tensor, list, list]:
    from bastion.attacks.inference import DefaultTrainer

    x, y = _population()
    g = torch.Generator().manual_seed(1)
    subsets = [torch.randperm(len(x), generator=g)[: len(x) // 2] for _ in range(refs)]
    return DefaultTrainer((1, 8, 8), 10, epochs=epochs), x, y, subsets, list(range(refs))


def _noop(unit: int) -> int:
    return unit


def _warm(unit: int) -> int:
    import bastion.attacks.inference._common  # noqa: F401

    time.sleep(1.0)  # long enough that every worker takes one
    return unit


def _timed_unit(shared: Any, unit: Any) -> float:
    """One reference block trained on a worker; the seconds it took there."""
    from bastion.attacks.inference._common import _train_unit

    start = time.perf_counter()
    _train_unit(shared, unit)
    return time.perf_counter() - start


def _child(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in this process (``--child``)."""
    torch.set_num_threads(1)
    from bastion.attacks.inference._common import REFERENCE_BLOCK, train_references
    from bastion.audit.executor import InProcessExecutor, RayExecutor

    trainer, x, y, subsets, seeds = _references(args.refs, args.epochs)
    if args.child == "lira":
        executor = RayExecutor(num_cpus=args.workers)
        # start the workers and import bastion and torch in each (not timed: a platform's
        # cluster is warm)
        executor.map(_warm, list(range(2 * args.workers)))
        start = time.perf_counter()
        models = train_references(trainer, x, y, subsets, seeds, executor=executor)
        seconds = time.perf_counter() - start
        digest = float(sum(p.detach().double().sum() for m in models for p in m.parameters()))
        # the same units again, each timed inside its task: did a unit take longer when two
        # ran at once (no free core for the second worker)?
        block = REFERENCE_BLOCK
        units = [(subsets[i : i + block], seeds[i : i + block]) for i in range(0, args.refs, block)]
        inside = executor.map(_timed_unit, units, shared=(trainer, x, y))
        return {
            "workers": args.workers,
            "seconds": seconds,
            "models": len(models),
            "checksum": digest,
            "unit_seconds_inside": inside,
            "load_average": os.getloadavg()[0],
        }
    if args.child == "overhead":
        executor = RayExecutor(num_cpus=2)
        executor.map(_noop, list(range(8)))
        latency = []  # one task's round trip: submit, run an empty function, fetch
        for _ in range(20):
            start = time.perf_counter()
            executor.map(_noop, [0])
            latency.append(time.perf_counter() - start)
        start = time.perf_counter()
        executor.map(_noop, list(range(args.tasks)))
        slot = (time.perf_counter() - start) * 2 / args.tasks  # a worker's time per task
        return {
            "per_task_overhead_s": statistics.median(latency),
            "per_task_slot_s": slot,
            "tasks": args.tasks,
        }
    # "units": in-process time of one unit of each kind
    block = REFERENCE_BLOCK
    times = []
    for k in range(4):  # the first (cold: lazy imports, allocator) is left out
        start = time.perf_counter()
        train_references(
            trainer,
            x,
            y,
            subsets[k * block : (k + 1) * block],
            seeds[k * block : (k + 1) * block],
            executor=InProcessExecutor(),
        )
        times.append(time.perf_counter() - start)
    _evasion_unit()
    return {
        "reference_block": block,
        "reference_unit_s": statistics.median(times[1:]),
        "evasion_unit_s": statistics.median([_evasion_unit() for _ in range(3)]),
        "evasion_block_images": _BLOCK_IMAGES,
    }


def _evasion_unit() -> float:
    """Seconds of one evasion shard: the audit's white-box ensemble on 64 digits images."""
    from bastion.attacks.evasion.catalog import build_attack
    from bastion.audit.evasion_shards import run_sharded
    from bastion.models import TorchClassifier
    from bastion.models.zoo import small_cnn, train_classifier

    x, y = _population(600)
    torch.manual_seed(0)
    net = train_classifier(small_cnn((1, 8, 8), 10, width=8), x[:500], y[:500], epochs=5, seed=0)
    clf = TorchClassifier(net, input_shape=(1, 8, 8), num_classes=10)
    attacks = [
        build_attack("apgd-ce", norm="linf", eps=0.1, steps=50, seed=1),
        build_attack("apgd-dlr", norm="linf", eps=0.1, steps=50, seed=2),
        build_attack("square", norm="linf", eps=0.1, max_queries=500, seed=3),
    ]
    xs, ys = x[500 : 500 + _BLOCK_IMAGES], y[500 : 500 + _BLOCK_IMAGES]
    start = time.perf_counter()
    run_sharded(clf, xs, ys, attacks, block_size=_BLOCK_IMAGES)
    return time.perf_counter() - start


def _run_child(kind: str, args: argparse.Namespace, workers: int = 1) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--workers",
        str(workers),
        "--refs",
        str(args.refs),
        "--epochs",
        str(args.epochs),
        "--tasks",
        str(args.tasks),
    ]
    env = {
        "RAY_TMPDIR": "/tmp/ray-bench",
        "RAY_raylet_start_wait_time_s": "180",
        **os.environ,
        "OMP_NUM_THREADS": "1",
    }
    for _ in range(3):  # a local Ray start can time out on a loaded machine: try again
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode == 0:
            return json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"retrying {kind} (workers={workers}): {done.stderr.strip().splitlines()[-1]}",
            flush=True,
        )
    raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")


def _waves(units: int, workers: int, unit_s: float, overhead_s: float) -> float:
    return math.ceil(units / workers) * (unit_s + overhead_s)


def _projection(units: dict[str, Any], overhead: float, gpus: int = 16) -> list[dict[str, Any]]:
    rows = []
    for what, count, unit_s in (
        (
            "LiRA, 256 reference models",
            256 // units["reference_block"],
            units["reference_unit_on_worker_s"],
        ),
        (
            "AutoAttack-style ensemble, 10,000 images",
            math.ceil(10_000 / _BLOCK_IMAGES),
            units["evasion_unit_s"],
        ),
    ):
        serial = count * unit_s
        cluster = _waves(count, gpus, unit_s, overhead)
        rows.append(
            {
                "work": what,
                "units": count,
                "unit_s": unit_s,
                "serial_s": serial,
                "cluster_s": cluster,
                "speedup": serial / cluster,
                "gpus": gpus,
                "arithmetic": f"ceil({count}/{gpus}) x ({unit_s:.2f} s + "
                f"{overhead * 1000:.1f} ms) = {cluster:.1f} s vs "
                f"{count} x {unit_s:.2f} s = {serial:.1f} s",
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--refs", type=int, default=16)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--tasks", type=int, default=200)
    p.add_argument("--out", type=Path, default=Path("bench-out/ray-units.json"))
    p.add_argument("--child", choices=["lira", "overhead", "units"], default=None)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()
    if args.child:
        print(json.dumps(_child(args)))
        return
    runs: dict[int, list[float]] = {1: [], 2: []}
    inside: dict[int, list[float]] = {1: [], 2: []}
    checksums = set()
    for rep in range(args.repeats):
        for workers in (1, 2) if rep % 2 == 0 else (2, 1):
            r = _run_child("lira", args, workers)
            runs[workers].append(r["seconds"])
            inside[workers].extend(r["unit_seconds_inside"])
            checksums.add(r["checksum"])
            print(
                f"lira refs={args.refs} workers={workers}: {r['seconds']:.2f} s (units inside: "
                f"{[round(t, 2) for t in r['unit_seconds_inside']]}, load "
                f"{r['load_average']:.1f})",
                flush=True,
            )
    overhead = _run_child("overhead", args)["per_task_overhead_s"]
    units = _run_child("units", args)
    # a reference block's time as a task on one Ray worker (no second task competing)
    units["reference_unit_on_worker_s"] = statistics.median(inside[1])
    med = {w: statistics.median(v) for w, v in runs.items()}
    result = {
        "refs": args.refs,
        "epochs": args.epochs,
        "runs": runs,
        "median_s": med,
        "speedup_2_vs_1": med[1] / med[2],
        "same_models": len(checksums) == 1,
        "unit_seconds_inside_median": {w: statistics.median(v) for w, v in inside.items()},
        "ray_per_task_overhead_s": overhead,
        "units": units,
        "projection": _projection(units, overhead),
        "load_average": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
