"""Tree-ensemble attacks and certificates: bastion vs dtai-veritas and ART 1.20 (issue 13).

Run in the bench venv (``bash benchmarks/setup_trees_venv.sh``)::

    OMP_NUM_THREADS=1 .bench-venv-trees/bin/python benchmarks/trees_bench.py --rows 100

Data: breast_cancer (binary), wine (3 classes) — both min-max scaled to [0, 1] on the training
split — and the synthetic mixed table (:func:`bastion.data.tabular.make_mixed_table`: integer,
categorical-code, one-hot and immutable columns, with the contract's rules; distances there are
weighted by 1/range per column so eps is in range units). Models: XGBoost (100 trees, depth 4),
LightGBM (100 trees, depth 5) and a random forest (100 trees, depth 6). Test rows: the first
``--rows`` rows of a seeded 35% test split.

Measured, per dataset and model:
- bastion's exact minimal L∞ distance (MILP, HiGHS) per row and its time;
- dtai-veritas's robustness search (binary classifiers; a bisection on delta) on the same rows:
  whether bastion's exact distance lies in veritas's [lower, upper] bracket, |difference| to its
  upper bound, and the time ratio;
- bastion's fast cell search: median distance / exact, time ratio;
- robust accuracy at a fixed eps: certified (exact), bastion fast, ART HopSkipJump and ZOO on
  ART's XGBoost/LightGBM wrappers (and ART DecisionTreeAttack vs bastion exact on a decision
  tree), their time ratios, and rule violations of every returned row (mixed table).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

warnings.filterwarnings("ignore")


def _data(name: str, seed: int = 0):
    from sklearn.datasets import load_breast_cancer, load_wine
    from sklearn.model_selection import train_test_split

    from bastion.data.contracts import infer_contract
    from bastion.data.tabular import FeatureSchema, make_mixed_table

    if name == "mixed":
        frame, y, rules = make_mixed_table(900, seed=seed)
        X = frame.to_numpy(dtype=np.float64)
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.35, random_state=seed)
        contract = infer_contract(
            frame.iloc[: len(Xtr)] if False else frame,
            immutable=rules["immutable"],
            one_hot=rules["one_hot"],
            categorical=rules["categorical"],
        )
        schema = FeatureSchema.from_contract(contract)
        span = np.where(np.isfinite(schema.high - schema.low), schema.high - schema.low, 1.0)
        schema = FeatureSchema(**{**schema.__dict__, "cost": 1.0 / np.maximum(span, 1e-12)})
        return Xtr, Xte, ytr, yte, schema, 0.1
    X, y = (load_breast_cancer if name == "breast_cancer" else load_wine)(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.35, random_state=seed)
    lo, hi = Xtr.min(axis=0), Xtr.max(axis=0)
    scale = np.where(hi > lo, hi - lo, 1.0)
    Xtr, Xte = (Xtr - lo) / scale, np.clip((Xte - lo) / scale, 0.0, 1.0)
    return Xtr, Xte, ytr, yte, None, 0.05


def _models(seed: int = 0):
    import lightgbm as lgb
    import xgboost as xgb
    from sklearn.ensemble import RandomForestClassifier

    return {
        "xgboost": lambda: xgb.XGBClassifier(
            n_estimators=100, max_depth=4, n_jobs=1, random_state=seed
        ),
        "lightgbm": lambda: lgb.LGBMClassifier(
            n_estimators=100, max_depth=5, num_leaves=24, n_jobs=1, verbose=-1, random_state=seed
        ),
        "random-forest": lambda: RandomForestClassifier(
            n_estimators=100, max_depth=6, n_jobs=1, random_state=seed
        ),
    }


def _veritas(model, rows, labels, start_delta: float, max_time: float):
    import veritas

    at = veritas.get_addtree(model, silent=True)
    out = []
    for x0, label in zip(rows, labels, strict=True):
        t = time.perf_counter()
        kw = (
            {"source_at": at, "target_at": None}
            if label == 1
            else {"source_at": None, "target_at": at}
        )
        search = veritas.VeritasRobustnessSearch(
            x0, start_delta, num_steps=30, max_time=max_time, silent=True, **kw
        )
        _, lower, upper = search.search()
        out.append((float(lower), float(upper), time.perf_counter() - t))
    return out


def _art_attacks(model, kind: str, Xtr, rows, labels, eps: float, schema, n_classes: int):
    """ART HopSkipJump and ZOO on ART's wrapper: x_adv and seconds per attack."""
    from art.attacks.evasion import HopSkipJump, ZooAttack

    # Scaled data: scalar clip values (ART's ZOO breaks on per-feature arrays).
    lo = 0.0 if schema is None else np.where(np.isfinite(schema.low), schema.low, 0)
    hi = 1.0 if schema is None else np.where(np.isfinite(schema.high), schema.high, 1)
    if kind == "xgboost":
        from art.estimators.classification import XGBoostClassifier

        clf = XGBoostClassifier(
            model=model, clip_values=(lo, hi), nb_features=rows.shape[1], nb_classes=n_classes
        )
    elif kind == "lightgbm":
        from art.estimators.classification import LightGBMClassifier

        clf = LightGBMClassifier(model=model.booster_, clip_values=(lo, hi))
    else:
        from art.estimators.classification import SklearnClassifier

        clf = SklearnClassifier(model=model, clip_values=(lo, hi))
    out = {}
    attacks = {
        "art-hopskipjump": lambda: HopSkipJump(
            clf, norm=np.inf, max_iter=20, max_eval=200, init_eval=20, verbose=False
        ),
        "art-zoo": lambda: ZooAttack(
            clf,
            max_iter=20,
            nb_parallel=4,
            binary_search_steps=3,
            use_resize=False,
            use_importance=False,
            verbose=False,
        ),
    }
    for name, make in attacks.items():
        t = time.perf_counter()
        try:
            adv = make().generate(rows.astype(np.float32)).astype(np.float64)
        except Exception as exc:  # a peer's failure is a result, not a crash
            out[name] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
            continue
        out[name] = {"x_adv": adv, "seconds": time.perf_counter() - t}
    return out


def _robust_at(ens, x_adv, rows, labels, eps, schema, weighted=True):
    from bastion.data.tabular import FeatureSchema

    s = schema or FeatureSchema.unconstrained(rows.shape[1])
    dist = s.distance(x_adv, rows, "linf") if weighted else np.abs(x_adv - rows).max(axis=1)
    flipped = (ens.predict(x_adv) != labels) & (dist <= eps + 1e-12)
    correct = ens.predict(rows) == labels
    return float((correct & ~flipped).mean()), dist


def run(
    datasets,
    model_names,
    n_rows: int,
    with_art: bool,
    with_veritas: bool,
    out: Path,
    unaided_rows: int = 20,
):
    from bastion.attacks.trees import certify, fast_tree_attack, minimal_perturbation
    from bastion.models.trees import to_ensemble

    results = []
    for ds in datasets:
        Xtr, Xte, ytr, yte, schema, eps = _data(ds)
        rows, labels = Xte[:n_rows], yte[:n_rows]
        for mname in model_names:
            model = _models()[mname]().fit(Xtr, ytr)
            ens = to_ensemble(model)
            labels_pred = ens.predict(rows)
            correct = labels_pred == labels
            # Distances are measured from the model's own prediction on misclassified rows too.
            target = labels_pred
            t = time.perf_counter()
            exact = minimal_perturbation(ens, rows, target, schema=schema, time_limit=60)
            t_exact = time.perf_counter() - t
            d_exact = np.array([s.distance for s in exact])
            t = time.perf_counter()
            fast = fast_tree_attack(ens, rows, target, schema=schema)
            t_fast = time.perf_counter() - t
            ok = np.isfinite(d_exact) & (d_exact > 0) & fast.found
            ratio = fast.distance[ok] / d_exact[ok]
            # The MILP without the fast search's help, on the first rows only (it is slow).
            k = min(unaided_rows, len(rows))
            t = time.perf_counter()
            minimal_perturbation(
                ens, rows[:k], target[:k], schema=schema, time_limit=60, warm_start=False
            )
            t_unaided = (time.perf_counter() - t) / max(k, 1)
            t = time.perf_counter()
            fast_tree_attack(ens, rows[:k], target[:k], schema=schema)
            t_fast_k = (time.perf_counter() - t) / max(k, 1)
            # Certificates at eps, as the audit computes them: rows the fast attack already
            # evaded within eps need no solve.
            t = time.perf_counter()
            fast_lab = fast_tree_attack(ens, rows, labels, schema=schema)
            cert = certify(
                ens, rows, labels, eps=eps, schema=schema, time_limit=60,
                known=np.where(fast_lab.found, fast_lab.distance, np.inf),
            )
            t_cert = time.perf_counter() - t
            ra_fast, _ = _robust_at(ens, fast.x_adv, rows, labels, eps, schema)
            entry = {
                "dataset": ds,
                "model": mname,
                "rows": len(rows),
                "eps": eps,
                "clean_accuracy": float(correct.mean()),
                "exact": {
                    "seconds": t_exact,
                    "median_distance": float(np.median(d_exact[np.isfinite(d_exact)])),
                    "timeouts": int(sum(s.status == "timeout" for s in exact)),
                    "unverified": int(sum(s.status == "unverified" for s in exact)),
                },
                "fast": {
                    "seconds": t_fast,
                    "time_ratio_vs_exact": t_fast / t_exact,
                    "unaided_exact_rows": k,
                    "unaided_exact_seconds_per_row": t_unaided,
                    "fast_seconds_per_row_same_rows": t_fast_k,
                    "time_ratio_vs_unaided_exact": t_fast_k / t_unaided,
                    "median_distance_ratio": float(np.median(ratio)) if ratio.size else None,
                    "max_distance_ratio": float(ratio.max()) if ratio.size else None,
                    "below_exact": int(np.sum(fast.distance[ok] < d_exact[ok] - 1e-9)),
                    "robust_accuracy": ra_fast,
                    "rule_violations": int((schema.check(fast.x_adv, rows) > 0).sum())
                    if schema
                    else 0,
                },
                "certified": {
                    "seconds": t_cert,
                    "certified_accuracy": cert.certified_accuracy,
                    "ci": list(cert.ci),
                },
            }
            if with_veritas and ens.n_classes == 2 and schema is None and mname != "random-forest":
                ver = _veritas(model, rows, target, start_delta=1.0, max_time=10)
                lower = np.array([v[0] for v in ver])
                upper = np.array([v[1] for v in ver])
                t_ver = sum(v[2] for v in ver)
                inside = (d_exact >= lower - 1e-6) & (d_exact <= upper + 1e-6)
                entry["veritas"] = {
                    "seconds": t_ver,
                    "time_ratio_bastion_over_veritas": t_exact / t_ver,
                    "exact_within_bracket": int(inside.sum()),
                    "median_abs_diff_to_upper": float(np.median(np.abs(upper - d_exact))),
                    "max_abs_diff_to_upper": float(np.max(np.abs(upper - d_exact))),
                    "equal_to_1e-6": int(np.sum(np.abs(upper - d_exact) <= 1e-6)),
                }
            if with_art and mname in ("xgboost", "lightgbm"):
                try:
                    art = _art_attacks(model, mname, Xtr, rows, labels, eps, schema, ens.n_classes)
                except Exception as exc:  # the wrapper itself refused the model
                    art = {"art-wrapper": {"error": f"{type(exc).__name__}: {exc}"[:200]}}
                for aname, res in art.items():
                    if "error" in res:
                        entry[aname] = res
                        continue
                    ra, _ = _robust_at(ens, res["x_adv"], rows, labels, eps, schema)
                    entry[aname] = {
                        "seconds": res["seconds"],
                        "robust_accuracy": ra,
                        "bastion_fast_time_ratio": t_fast / res["seconds"],
                        "rule_violations": int((schema.check(res["x_adv"], rows) > 0).sum())
                        if schema
                        else None,
                    }
            results.append(entry)
            print(json.dumps(entry), flush=True)
        if with_art and schema is None:
            results.append(_decision_tree_vs_art(Xtr, ytr, rows, labels, eps))
            print(json.dumps(results[-1]), flush=True)
    out.write_text(json.dumps({"results": results}, indent=1))


def _decision_tree_vs_art(Xtr, ytr, rows, labels, eps):
    from art.attacks.evasion import DecisionTreeAttack
    from art.estimators.classification import SklearnClassifier
    from sklearn.tree import DecisionTreeClassifier

    from bastion.attacks.trees import fast_tree_attack, minimal_perturbation
    from bastion.models.trees import to_ensemble

    dt = DecisionTreeClassifier(max_depth=6, random_state=0).fit(Xtr, ytr)
    ens = to_ensemble(dt)
    t = time.perf_counter()
    exact = minimal_perturbation(ens, rows, ens.predict(rows))
    t_b = time.perf_counter() - t
    x_b = np.stack([s.x_adv for s in exact])
    t = time.perf_counter()
    clf = SklearnClassifier(model=dt, clip_values=(0.0, 1.0))
    x_a = DecisionTreeAttack(clf, offset=1e-3, verbose=False).generate(rows.astype(np.float32))
    t_a = time.perf_counter() - t
    t = time.perf_counter()
    fast = fast_tree_attack(ens, rows, ens.predict(rows))
    t_f = time.perf_counter() - t
    ra_b, d_b = _robust_at(ens, x_b, rows, labels, eps, None)
    ra_f, d_f = _robust_at(ens, fast.x_adv, rows, labels, eps, None)
    ra_a, d_a = _robust_at(ens, x_a.astype(np.float64), rows, labels, eps, None)
    return {
        "dataset": "decision-tree",
        "model": "sklearn DecisionTree depth 6",
        "bastion_exact": {
            "seconds": t_b,
            "robust_accuracy": ra_b,
            "median_linf": float(np.median(d_b)),
        },
        "bastion_fast": {
            "seconds": t_f,
            "robust_accuracy": ra_f,
            "median_linf": float(np.median(d_f)),
            "time_ratio_vs_art": t_f / t_a,
        },
        "art-decision-tree": {
            "seconds": t_a,
            "robust_accuracy": ra_a,
            "median_linf": float(np.median(d_a)),
            "bastion_time_ratio": t_b / t_a,
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--datasets", default="breast_cancer,wine,mixed")
    ap.add_argument("--models", default="xgboost,lightgbm,random-forest")
    ap.add_argument("--no-art", action="store_true")
    ap.add_argument("--no-veritas", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("trees-bench.json"))
    ap.add_argument(
        "--unaided-rows", type=int, default=20, help="rows for the exact MILP without warm start"
    )
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    run(
        args.datasets.split(","),
        args.models.split(","),
        args.rows,
        not args.no_art,
        not args.no_veritas,
        args.out,
        args.unaided_rows,
    )


if __name__ == "__main__":
    main()
