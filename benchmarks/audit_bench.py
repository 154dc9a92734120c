"""The audit's own overhead, and per-check times on the demo and on an MNIST CNN.

Overhead: the same checks, on the same model and data, run two ways, interleaved and repeated:

- ``direct``: load the data, build the context, call each check's ``run`` (what a user
  gluing the checks together by hand would do);
- ``audit``: :func:`bastion.audit.runner.run_audit` end to end (scan and digest the model,
  plan, fingerprint, run, save each result for resume, build and validate the document, write
  ``report.json``), with ``fresh=True`` so nothing is reused.

Two overhead figures: ``within``, the audit's total minus the time its checks spent in their
own ``run`` in the same process and the same run (immune to the load of a shared machine, the
figure to read), and ``vs direct``, ``(audit - direct) / audit`` on the medians of separate,
interleaved runs (noisy on a busy machine). Rendering HTML and Markdown is timed separately
(it is the report's work, not the runner's).

    nice .venv/bin/python benchmarks/audit_bench.py --repeats 3 --out bench-out/audit.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _demo_inputs(d: Path) -> tuple[Any, Any]:
    from bastion.data import load_digits
    from bastion.models import TorchClassifier
    from bastion.models.zoo import small_cnn, train_classifier

    data = load_digits()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    x, y = data.x[perm], data.y[perm]
    torch.manual_seed(0)
    net = train_classifier(small_cnn((1, 8, 8), 10, width=8), x[:1400], y[:1400], epochs=10,
                           lr=3e-3, seed=0)
    return _save(d, net, (1, 8, 8), x[:1400], y[:1400], x[1400:], y[1400:], TorchClassifier)


def _mnist_inputs(d: Path) -> tuple[Any, Any]:
    from bastion.data import load_mnist
    from bastion.models import TorchClassifier
    from bastion.models.zoo import small_cnn, train_classifier

    data = load_mnist()
    x, y = data.x, data.y
    torch.manual_seed(0)
    net = train_classifier(small_cnn((1, 28, 28), 10, width=8), x[:3000], y[:3000], epochs=3,
                           lr=3e-3, seed=0)
    return _save(d, net, (1, 28, 28), x[:3000], y[:3000], x[3000:3500], y[3000:3500],
                 TorchClassifier)


def _save(d: Path, net: Any, shape: tuple[int, ...], xtr: Any, ytr: Any, xte: Any, yte: Any,
          cls: Any) -> tuple[Any, Any]:
    from bastion.audit.config import AuditConfig

    d.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), d / "model.pt")
    np.savez(d / "train.npz", x=xtr.numpy(), y=ytr.numpy())
    np.savez(d / "test.npz", x=xte.numpy(), y=yte.numpy())
    clf = cls(net, input_shape=shape, num_classes=10)
    config = AuditConfig(model=str(d / "model.pt"), train=d / "train.npz", test=d / "test.npz",
                         out=d / "audit")
    return clf, config


def _direct(clf: Any, config: Any) -> dict[str, float]:
    """Each planned check's run, by hand (the context built the way the runner builds it)."""
    from bastion.audit.runner import _catalogue, prepare

    prepared = prepare(config, _catalogue(None), classifier=clf)
    times = {}
    for check, entry in zip(prepared.checks, prepared.plan, strict=True):
        if entry.will_run:
            start = time.perf_counter()
            check.run(prepared.ctx)
            times[check.name] = time.perf_counter() - start
    return times


def _audit(clf: Any, config: Any) -> tuple[float, dict[str, float], float]:
    from bastion.audit.runner import run_audit, write_reports

    start = time.perf_counter()
    outcome = run_audit(config, classifier=clf, fresh=True, formats=("json",))
    total = time.perf_counter() - start
    start = time.perf_counter()
    write_reports(outcome.document, config.out, ("html", "md"))
    render = time.perf_counter() - start
    return total, {c["name"]: c["seconds"] for c in outcome.document["checks"]
                   if c["status"] in ("passed", "failed")}, render


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mnist-repeats", type=int, default=1,
                        help="repeats of the (slower) MNIST case")
    parser.add_argument("--cases", default="demo,mnist")
    parser.add_argument("--out", type=Path, default=Path("bench-out/audit.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases.split(","):
            clf, config = (_demo_inputs if case == "demo" else _mnist_inputs)(Path(tmp) / case)
            direct, audit, renders, per_check = [], [], [], []
            for r in range(args.repeats if case == "demo" else args.mnist_repeats):
                order = ("direct", "audit") if r % 2 == 0 else ("audit", "direct")
                for way in order:
                    if way == "direct":
                        direct.append(sum(_direct(clf, config).values()))
                    else:
                        total, checks, render = _audit(clf, config)
                        audit.append(total)
                        renders.append(render)
                        per_check.append(checks)
            d, a = statistics.median(direct), statistics.median(audit)
            within = [(t - sum(p.values())) / t for t, p in zip(audit, per_check, strict=True)]
            results[case] = {
                "overhead_within": within, "median_overhead_within": statistics.median(within),
                "median_overhead_within_s": statistics.median(
                    t - sum(p.values()) for t, p in zip(audit, per_check, strict=True)),
                "direct_s": direct, "audit_s": audit, "render_html_md_s": renders,
                "median_direct_s": d, "median_audit_s": a, "overhead_vs_direct": (a - d) / a,
                "per_check_median_s": {k: statistics.median(p[k] for p in per_check)
                                       for k in per_check[0]},
            }
            print(case, json.dumps(results[case], indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
