"""Drift detectors side by side: bastion.monitor vs alibi-detect (KSDrift and MMDDrift).

alibi-detect needs numpy<2 and the project venv runs numpy 2, so each library runs in its own
venv as a subprocess on the same saved data (an ``.npz``); the two are run in alternation,
``--reps`` rounds, and the per-call times are the medians over rounds. Both run one thread.

Data (``bench-out/drift/data.npz``):
- MNIST (test set, shuffled with seed 0), raw pixels flattened to 784 features: a reference
  of 1,000 images; three no-drift batches of 250 fresh images; three drifted batches:
  brightened (+0.1), Gaussian noise (σ=0.1), class shift (digits 0–4 only).
- Breast cancer (scikit-learn, 30 features, standardised with the reference's mean and std):
  a reference of 369 rows; two no-drift batches of 100 held-out rows; two drifted batches:
  malignant cases only (60) and +0.5 standard deviations on three features (100).

Each library builds a detector on the reference (timed: ``init``), tests one batch to warm
up, then times one test per batch (``test``). Same settings on both sides: p-value
0.05, Bonferroni, 100 permutations, each library's own median-heuristic bandwidth. A third
line, ``alibi mmd (same σ)``, gives alibi bastion's bandwidth to check that both compute the
same unbiased MMD² (both drop the kernel diagonal).

Usage (from the repository root):
    bash benchmarks/setup_drift_venv.sh
    .venv/bin/python benchmarks/drift_bench.py --reps 5
    .venv/bin/python benchmarks/drift_bench.py --reps 3 --same-venv   # bastion under numpy<2 too
    .venv/bin/python benchmarks/drift_bench.py --reliability 10   # bastion's test settings
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-out" / "drift"
BASTION_PY = ROOT / ".venv" / "bin" / "python"
ALIBI_PY = ROOT / ".bench-venv-drift" / "bin" / "python"


# --- data ---------------------------------------------------------------------------------------


def make_data(path: Path) -> None:
    import numpy as np
    import torch
    from sklearn.datasets import load_breast_cancer

    from bastion.data import load_mnist
    from bastion.monitor._mmd import median_bandwidth

    arrays: dict[str, Any] = {}
    data = load_mnist()
    perm = torch.randperm(len(data.x), generator=torch.Generator().manual_seed(0))
    x = data.x[perm].reshape(len(perm), -1).numpy()
    y = data.y[perm].numpy()
    ref, stream, labels = x[:1000], x[1000:], y[1000:]
    rng = np.random.default_rng(1)
    arrays["mnist/ref"] = ref
    for i in range(3):
        arrays[f"mnist/none-{i}"] = stream[i * 250:(i + 1) * 250]
    base = stream[1000:1250]
    arrays["mnist/drift-bright"] = np.clip(base + 0.1, 0, 1).astype(np.float32)
    arrays["mnist/drift-noise"] = np.clip(
        base + rng.normal(0, 0.1, base.shape), 0, 1
    ).astype(np.float32)
    arrays["mnist/drift-class"] = stream[2000:][labels[2000:] < 5][:250]

    xb, yb = load_breast_cancer(return_X_y=True)
    p = np.random.default_rng(0).permutation(len(xb))
    xb, yb = xb[p], yb[p]
    mu, sd = xb[:369].mean(0), xb[:369].std(0)
    z = ((xb - mu) / sd).astype(np.float32)
    arrays["cancer/ref"] = z[:369]
    rest, rest_y = z[369:], yb[369:]
    arrays["cancer/none-0"] = rest[:100]
    arrays["cancer/none-1"] = rest[100:200]
    arrays["cancer/drift-malignant"] = rest[rest_y == 0][:60]
    shifted = rest[:100].copy()
    shifted[:, [0, 5, 10]] += 0.5
    arrays["cancer/drift-shift"] = shifted
    for ds in ("mnist", "cancer"):
        arrays[f"{ds}/sigma"] = np.array(
            [median_bandwidth(torch.from_numpy(arrays[f"{ds}/ref"]))], dtype=np.float32
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


# --- workers (run in each library's venv) ---------------------------------------------------------


def _detectors(lib: str, ref: Any, sigma: float, seed: int) -> dict[str, Any]:
    """name -> (constructor thunk, test function returning (p, statistic, drift))."""
    import numpy as np
    import torch

    if lib == "bastion":
        from bastion.monitor import KSDrift, MMDDrift

        def b_test(det: Any, x: Any) -> tuple[float, float, bool]:
            r = det.test(x)
            return r.p_value, r.statistic, r.drift

        return {
            "ks": (lambda: KSDrift(ref, alpha=0.05), b_test),
            "mmd": (lambda: MMDDrift(ref, alpha=0.05, n_permutations=100, seed=seed), b_test),
        }
    from alibi_detect.cd import KSDrift as AKS
    from alibi_detect.cd import MMDDrift as AMMD

    def ks_test(det: Any, x: Any) -> tuple[float, float, bool]:
        r = det.predict(x)["data"]
        p = np.asarray(r["p_val"], dtype=np.float64)
        return float(min(1.0, p.min() * p.size)), float(np.max(r["distance"])), bool(r["is_drift"])

    def mmd_test(det: Any, x: Any) -> tuple[float, float, bool]:
        torch.manual_seed(seed)
        r = det.predict(x)["data"]
        return float(r["p_val"]), float(r["distance"]), bool(r["is_drift"])

    return {
        "ks": (lambda: AKS(ref, p_val=0.05, correction="bonferroni"), ks_test),
        "mmd": (lambda: AMMD(ref, backend="pytorch", p_val=0.05, n_permutations=100), mmd_test),
        "mmd (same σ)": (
            lambda: AMMD(ref, backend="pytorch", p_val=0.05, n_permutations=100,
                         sigma=np.array([sigma], dtype=np.float32)),
            mmd_test,
        ),
    }


def worker(lib: str, data_path: Path, seed: int) -> list[dict[str, Any]]:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    with np.load(data_path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for ds in ("mnist", "cancer"):
        ref = arrays[f"{ds}/ref"]
        sigma = float(arrays[f"{ds}/sigma"][0])
        batches = sorted(k.split("/", 1)[1] for k in arrays
                         if k.startswith(f"{ds}/") and k.split("/", 1)[1] not in ("ref", "sigma"))
        for name, (build, test) in _detectors(lib, ref, sigma, seed).items():
            t0 = time.perf_counter()
            det = build()
            init_s = time.perf_counter() - t0
            test(det, arrays[f"{ds}/{batches[0]}"])  # warm-up
            for b in batches:
                t0 = time.perf_counter()
                p, stat, drift = test(det, arrays[f"{ds}/{b}"])
                rows.append({"lib": lib, "dataset": ds, "detector": name, "batch": b,
                             "init_s": init_s, "test_s": time.perf_counter() - t0,
                             "p_value": p, "statistic": stat, "drift": drift,
                             "n_ref": int(ref.shape[0]),
                             "n_batch": int(arrays[f"{ds}/{b}"].shape[0])})
    return rows


def versions(lib: str) -> dict[str, str]:
    from importlib.metadata import version

    names = ["numpy", "scipy", "torch"] + (["alibi-detect"] if lib == "alibi" else ["bastion-ml"])
    out = {n: version(n) for n in names}
    if lib == "bastion":
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=False).stdout.strip()
        out["bastion git"] = rev
    return out


# --- reliability of bastion's settings (project venv only) ---------------------------------------


def _tabular(n: int, rng: Any) -> Any:
    import numpy as np

    z = rng.normal(size=(n, 4))
    mix = np.array([[1.0, 0.5, 0.0, 0.0], [0.0, 1.0, 0.3, 0.0], [0.0, 0.0, 1.0, 0.2],
                    [0.0, 0.0, 0.0, 1.0]])
    return np.column_stack([z @ mix, rng.lognormal(size=n), rng.poisson(3.0, size=n)])


def reliability(seeds: int) -> str:
    """The test suite's detector settings over ``seeds`` shuffles instead of one."""
    import numpy as np
    import torch

    from bastion.data import load_mnist
    from bastion.monitor import ChiSquareDrift, DriftMonitor, KSDrift, MMDDrift, PSIDrift

    torch.set_num_threads(1)
    data = load_mnist()
    names = ["ks", "mmd", "psi", "chi2"]
    alarms = dict.fromkeys(names, 0)
    caught: dict[str, int] = {}
    for seed in range(seeds):
        perm = torch.randperm(len(data.x), generator=torch.Generator().manual_seed(seed))
        x, y = data.x[perm], data.y[perm]
        ref, ref_y, stream, sy = x[:5000], y[:5000], x[5000:], y[5000:]
        dets = {
            "ks": KSDrift(ref, alpha=1e-3),
            "mmd": MMDDrift(ref[:1000], alpha=1e-3, n_permutations=1000, seed=seed),
            "psi": PSIDrift(ref, alpha=1e-3, n_calibration=1000, reduce="random", dim=16,
                            seed=seed),
            "chi2": ChiSquareDrift(ref_y, alpha=1e-3),
        }
        for name, det in dets.items():
            mon = DriftMonitor(det, window=250)
            mon.update(sy if name == "chi2" else stream)
            alarms[name] += mon.drift_count
        w = stream[:250]
        g = torch.Generator().manual_seed(seed)
        low = sy < 5
        shifted = {"brightened": (w + 0.1).clamp(0, 1),
                   "noised": (w + 0.1 * torch.randn(w.shape, generator=g)).clamp(0, 1),
                   "class shift": stream[low][:250]}
        for kind, win in shifted.items():
            for name in ("ks", "mmd"):
                key = f"MNIST {kind}, {name}"
                caught[key] = caught.get(key, 0) + int(dets[name].test(win).drift)
        key = "MNIST class shift, chi2 on labels"
        caught[key] = caught.get(key, 0) + int(dets["chi2"].test(sy[low][:250]).drift)
    tab_names = ["ks", "ks fdr", "psi", "mmd"]
    tab_alarms = dict.fromkeys(tab_names, 0)
    for seed in range(seeds):
        rng = np.random.default_rng(100 + seed)
        ref_t = _tabular(3000, rng)
        mu = torch.tensor(ref_t.mean(0)).float()
        sd = torch.tensor(ref_t.std(0)).float()
        dets_t = {
            "ks": KSDrift(ref_t, alpha=1e-3),
            "ks fdr": KSDrift(ref_t, alpha=1e-3, correction="fdr"),
            "psi": PSIDrift(ref_t, alpha=1e-3, n_calibration=1000, seed=seed),
            "mmd": MMDDrift(ref_t[:1000], alpha=1e-3, n_permutations=1000, seed=seed,
                            preprocess=lambda t, mu=mu, sd=sd: (t - mu) / sd),
        }
        for name, det in dets_t.items():
            mon = DriftMonitor(det, window=200)
            for _ in range(20):
                mon.update(_tabular(200, rng))
            tab_alarms[name] += mon.drift_count
            s = _tabular(200, rng)
            s[:, 1] += 0.75
            key = f"tabular +0.75 sd on one column, {name}"
            if name == "mmd":
                key += " (standardised)"
            caught[key] = caught.get(key, 0) + int(mon.update(s)[0].drift)
    flat = data.x.reshape(len(data.x), -1)
    p_values = []
    for t in range(300):
        perm = torch.randperm(len(flat), generator=torch.Generator().manual_seed(1000 + t))
        det = MMDDrift(flat[perm[:500]], alpha=0.05, n_permutations=200, seed=t)
        p_values.append(det.test(flat[perm[500:750]]).p_value)
    p = np.array(p_values)
    lines = [f"Stable streams, alpha = 1e-3, {seeds} seeds x 20 windows = {20 * seeds} windows:",
             "", "| stream | detector | false alarms |", "|---|---|---:|"]
    lines += [f"| MNIST, windows of 250 | {k} | {v} |" for k, v in alarms.items()]
    lines += [f"| tabular, windows of 200 | {k} | {v} |" for k, v in tab_alarms.items()]
    lines += ["", f"Injected drift caught within one window, out of {seeds}:", "",
              "| drift, detector | caught |", "|---|---:|"]
    lines += [f"| {k} | {v}/{seeds} |" for k, v in caught.items()]
    lines += ["", "MMD p-value under H0 (300 random MNIST splits, reference 500, batch 250, "
              f"200 permutations): P(p<0.05) = {(p < 0.05).mean():.3f}, "
              f"P(p<0.01) = {(p < 0.01).mean():.4f}, P(p<0.5) = {(p < 0.5).mean():.3f}"]
    return "\n".join(lines)


# --- orchestration --------------------------------------------------------------------------------


def _run_worker(python: Path, lib: str, data: Path, seed: int) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [str(python), __file__, "--worker", lib, "--data", str(data), "--seed", str(seed)],
        capture_output=True, text=True, env=env, check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{lib} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt_p(p: float) -> str:
    return f"{p:.3g}" if p >= 1e-3 else f"{p:.1e}"


def report(rounds: list[list[dict[str, Any]]], vers: dict[str, dict[str, str]]) -> str:
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for rows in rounds:
        for r in rows:
            groups.setdefault((r["dataset"], r["lib"], r["detector"], r["batch"]), []).append(r)
    lines = ["| data | library | detector | init (ms) | test (ms, median per batch) |",
             "|---|---|---|---:|---:|"]
    seen: set[tuple[str, str, str]] = set()
    for (ds, lib, det, _), _rs in sorted(groups.items()):
        if (ds, lib, det) in seen:
            continue
        seen.add((ds, lib, det))
        cells = [r for (d2, l2, t2, _), rs in groups.items() if (d2, l2, t2) == (ds, lib, det)
                 for r in rs]
        init = statistics.median(r["init_s"] for r in cells) * 1e3
        test = statistics.median(r["test_s"] for r in cells) * 1e3
        lines.append(f"| {ds} | {lib} | {det} | {init:.1f} | {test:.1f} |")
    lines += ["", "p-values (round 0; MMD: median over rounds, each round its own seed) and "
              "drift calls at 0.05:", "",
              "| data | batch | bastion KS | alibi KS | bastion MMD | alibi MMD | "
              "alibi MMD (same σ) | bastion MMD² | alibi MMD² (same σ) |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    batches = sorted({(k[0], k[3]) for k in groups})
    for ds, b in batches:
        def cell(lib: str, det: str, key: str = "p_value", ds: str = ds, b: str = b) -> Any:
            rs = groups.get((ds, lib, det, b), [])
            if not rs:
                return None
            if key == "p_value" and det.startswith("mmd"):
                return statistics.median(r[key] for r in rs), rs[0]["drift"]
            return rs[0][key], rs[0]["drift"]

        out = [ds, b]
        for lib, det in (("bastion", "ks"), ("alibi", "ks"), ("bastion", "mmd"), ("alibi", "mmd"),
                         ("alibi", "mmd (same σ)")):
            c = cell(lib, det)
            out.append("–" if c is None else f"{_fmt_p(c[0])} ({'drift' if c[1] else 'ok'})")
        bs = cell("bastion", "mmd", "statistic")
        al = cell("alibi", "mmd (same σ)", "statistic")
        out.append("–" if bs is None else f"{bs[0]:.6f}")
        out.append("–" if al is None else f"{al[0]:.6f}")
        lines.append("| " + " | ".join(out) + " |")
    lines += ["", "Versions: " + "; ".join(
        f"{lib}: " + ", ".join(f"{k} {v}" for k, v in vs.items()) for lib, vs in vers.items())]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5, help="rounds (each runs both libraries once)")
    ap.add_argument("--worker", choices=["bastion", "alibi"], help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, default=OUT / "data.npz")
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--same-venv", action="store_true",
                    help="run bastion in the alibi venv too (numpy<2) instead of the project venv")
    ap.add_argument("--reliability", type=int, metavar="SEEDS", default=0,
                    help="instead: the test suite's settings over SEEDS shuffles (bastion only)")
    args = ap.parse_args()
    if args.reliability:
        text = reliability(args.reliability)
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "reliability.md").write_text(text + "\n")
        print(text)
        return
    if args.worker:
        rows = worker(args.worker, args.data, args.seed)
        print(json.dumps({"rows": rows, "versions": versions(args.worker)}))
        return
    if not ALIBI_PY.exists():
        raise SystemExit("run `bash benchmarks/setup_drift_venv.sh` first")
    make_data(args.data)
    rounds: list[list[dict[str, Any]]] = []
    vers: dict[str, dict[str, str]] = {}
    for r in range(args.reps):
        order = [("bastion", ALIBI_PY if args.same_venv else BASTION_PY), ("alibi", ALIBI_PY)]
        if r % 2:
            order.reverse()
        rows: list[dict[str, Any]] = []
        for lib, py in order:
            res = _run_worker(py, lib, args.data, seed=r)
            rows += res["rows"]
            vers[lib] = res["versions"]
        rounds.append(rows)
        print(f"round {r + 1}/{args.reps} done", file=sys.stderr, flush=True)
    suffix = "-same-venv" if args.same_venv else ""
    (OUT / f"results{suffix}.json").write_text(
        json.dumps({"rounds": rounds, "versions": vers}, indent=1)
    )
    table = report(rounds, vers)
    (OUT / f"table{suffix}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
