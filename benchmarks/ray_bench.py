"""The Ray executor's overhead over in-process on the demo audit (issue 14).

The demo model (the digits CNN of ``bastion demo``) is trained once; then the same audit (every
check, fresh) runs alternately in-process and on a local two-CPU Ray cluster started once
beforehand (its start-up is reported apart), ``--repeats`` times each. Overhead is
``median(ray) / median(in-process) - 1`` on the audit's wall time, for two Ray settings:

- ``ray[2]``: two workers, checks in parallel (what a user gets);
- ``ray[1 at a time]``: each task asks for both CPUs, so checks run one after the other, as
  in-process: the executor's pure cost (shipping the context, scheduling, results).

Every run's report must equal the in-process one, timings aside (checked, not assumed).

    nice .venv/bin/python benchmarks/ray_bench.py --repeats 3 --out bench-out/ray.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _stable(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in c.items() if k != "seconds"} for c in doc["checks"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import ray

    from bastion.audit.config import AuditConfig, AuditThreat
    from bastion.audit.demo import run_demo
    from bastion.audit.executor import InProcessExecutor, RayExecutor
    from bastion.audit.runner import run_audit
    from bastion.models import TorchClassifier

    root = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    first = run_demo(root / "demo")  # trains the model and writes model.pt, train/test.npz
    reference = _stable(first.document)
    import torch

    from bastion.models.zoo import small_cnn

    net = small_cnn((1, 8, 8), 10, width=8)
    net.load_state_dict(torch.load(root / "demo" / "model.pt", weights_only=True))
    clf = TorchClassifier(net, input_shape=(1, 8, 8), num_classes=10, bounds=(0.0, 1.0))

    def audit(executor: Any, out: Path) -> tuple[float, list[dict[str, Any]]]:
        config = AuditConfig(model=str(root / "demo" / "model.pt"),
                             train=root / "demo" / "train.npz", test=root / "demo" / "test.npz",
                             out=out, seed=0, threat=AuditThreat(eps=0.1))
        t = time.perf_counter()
        doc = run_audit(config, classifier=clf, command="demo", fresh=True, formats=("json",),
                        executor=executor).document
        return time.perf_counter() - t, _stable(doc)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "audit"))
    from _ray_cluster import LocalCluster

    t = time.perf_counter()
    cluster = LocalCluster(head_cpus=2)
    ray.init(address=cluster.address, log_to_driver=False)
    startup = time.perf_counter() - t
    runs: dict[str, list[float]] = {"in-process": [], "ray[2]": [], "ray[1 at a time]": []}
    executors = {"in-process": InProcessExecutor(), "ray[2]": RayExecutor(),
                 "ray[1 at a time]": RayExecutor(cpus_per_task=2)}
    same = True
    try:
        for r in range(args.repeats):
            for name, ex in executors.items():
                seconds, stable = audit(ex, root / f"{name}-{r}")
                same &= stable == reference
                runs[name].append(seconds)
                print(f"run {r} {name}: {seconds:.1f} s, same report: {stable == reference}",
                      flush=True)
    finally:
        ray.shutdown()
        cluster.stop()
    med = {k: statistics.median(v) for k, v in runs.items()}
    result = {
        "repeats": args.repeats, "ray_version": ray.__version__,
        "cluster_startup_s": startup, "runs_s": runs, "median_s": med,
        "overhead": {k: med[k] / med["in-process"] - 1 for k in med if k != "in-process"},
        "reports_identical": same,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
