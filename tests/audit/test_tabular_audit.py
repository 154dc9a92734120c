"""The tabular audit end to end: a tree model file, CSV tables with named columns and a data
contract; planted weaknesses (an overfit forest trained on flipped labels that leaks a
sensitive column) produce findings a small clean booster does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bastion.audit.config import AuditConfig
from bastion.audit.runner import run_audit
from bastion.data.contracts import infer_contract, save_contract
from bastion.data.tabular import make_mixed_table

N_TRAIN = 300


def _table(*, leak: bool = False) -> tuple[pd.DataFrame, np.ndarray, dict, np.ndarray]:
    """The mixed table with a binary ``smoker`` column, rows shuffled (a random split), and
    10% of the training labels flipped (the mask is returned). ``smoker`` is random; with
    ``leak`` the label depends on it: the sign of ``f2`` for smokers, of ``f3`` for the others
    (an interaction a model learns and a linear baseline cannot see)."""
    frame, y, rules = make_mixed_table(450, seed=3)
    rng = np.random.default_rng(0)
    smoker = rng.integers(0, 2, len(frame))
    if leak:
        y = np.where(smoker == 1, frame["f2"] > 0, frame["f3"] > 0).astype(np.int64)
    frame.insert(5, "smoker", smoker.astype(np.int64))
    order = rng.permutation(len(frame))
    frame, y = frame.iloc[order].reset_index(drop=True), y[order]
    flip = np.zeros(len(y), dtype=bool)
    flip[:N_TRAIN] = rng.random(N_TRAIN) < 0.1
    return frame, y, rules, flip


def _files(d: Path, frame: pd.DataFrame, labels: np.ndarray, rules: dict) -> dict[str, Path]:
    table = frame.copy()
    table["default"] = labels
    table.iloc[:N_TRAIN].to_csv(d / "train.csv", index=False)
    table.iloc[N_TRAIN:].to_parquet(d / "test.parquet")
    save_contract(infer_contract(table.iloc[:N_TRAIN], immutable=rules["immutable"],
                                 one_hot=rules["one_hot"],
                                 categorical=[*rules["categorical"], "smoker"]),
                  d / "contract.yaml")
    return {"train": d / "train.csv", "test": d / "test.parquet", "contract": d / "contract.yaml"}


def _audit(d: Path, model: Path, files: dict[str, Path]) -> dict:
    config = AuditConfig(
        model=str(model), train=files["train"], test=files["test"],
        contract=files["contract"], label="default", out=d / "out", skip=("evasion",),
        settings={"inversion": {"sensitive_column": "smoker"},
                  "extraction": {"budget": 3000, "points": 2},
                  "membership": {"n_reference": 2}})
    return run_audit(config, fresh=True, formats=("json",)).document


def _check(doc: dict, name: str) -> dict:
    return next(c for c in doc["checks"] if c["name"] == name)


def _ids(check: dict, severities: tuple[str, ...] = ("low", "medium", "high", "critical")
         ) -> set[str]:
    return {f["id"] for f in check["findings"] if f["severity"] in severities}


@pytest.fixture(scope="module")
def leaky(tmp_path_factory) -> tuple[dict, np.ndarray]:
    """An overfit random forest (full depth, no bootstrap) on flipped labels, in skops."""
    import skops.io as sio
    from sklearn.ensemble import RandomForestClassifier

    d = tmp_path_factory.mktemp("leaky")
    frame, y, rules, flip = _table(leak=True)
    noisy = np.where(flip, 1 - y, y)
    rf = RandomForestClassifier(n_estimators=30, bootstrap=False, random_state=0)
    rf.fit(frame.iloc[:N_TRAIN], noisy[:N_TRAIN])
    sio.dump(rf, d / "model.skops")
    doc = _audit(d, d / "model.skops", _files(d, frame, noisy, rules))
    return doc, np.flatnonzero(flip[:N_TRAIN])


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> dict:
    """A small XGBoost model (20 trees of depth 2) on the true labels, as XGBoost JSON."""
    import xgboost as xgb

    d = tmp_path_factory.mktemp("clean")
    frame, y, rules, _ = _table()
    booster = xgb.XGBClassifier(n_estimators=20, max_depth=2, random_state=0)
    booster.fit(frame.iloc[:N_TRAIN], y[:N_TRAIN])
    booster.get_booster().save_model(str(d / "model.json"))
    return _audit(d, d / "model.json", _files(d, frame, y, rules))


def test_the_report_keeps_the_named_columns(leaky) -> None:
    doc, _ = leaky
    names = doc["data"]["test"]["features"]
    assert names[:6] == ["f0", "f1", "f2", "f3", "f4", "smoker"] and "default" not in names
    assert doc["data"]["contract"]["features"] == names
    assert doc["model"]["domain"] == "tabular"


def test_an_overfit_forest_leaks_membership_and_the_small_booster_less(leaky, clean) -> None:
    doc, _ = leaky
    member = _check(doc, "membership")
    assert "membership.lira" in _ids(member, ("medium", "high", "critical"))
    assert "random-forest, 30 trees" in member["settings"]["reference_models"]
    quiet = _check(clean, "membership")
    assert "xgboost, 20 trees, depth 2" in quiet["settings"]["reference_models"]
    assert not _ids(quiet, ("high", "critical"))
    assert member["metrics"]["lira.auc"]["value"] > quiet["metrics"]["lira.auc"]["value"] + 0.1


def test_the_overfit_forest_leaks_the_sensitive_column(leaky, clean) -> None:
    doc, _ = leaky
    inv = _check(doc, "inversion")
    assert inv["status"] == "failed", inv["summary"]
    finding = next(f for f in inv["findings"] if f["id"] == "inversion.attribute-inference")
    assert finding["location"] == "feature:smoker"
    assert inv["settings"]["column_index"] == doc["data"]["test"]["features"].index("smoker")
    assert _check(clean, "inversion")["status"] == "passed"


def test_confident_learning_finds_the_flipped_labels(leaky, clean) -> None:
    doc, flipped = leaky
    poison = _check(doc, "poisoning")
    assert "poisoning.suspected-mislabels" in _ids(poison)
    flagged = set(poison["settings"]["flagged_indices"])
    hits = len(flagged & set(flipped.tolist()))
    assert hits >= 0.6 * len(flipped), (hits, len(flipped))
    assert hits >= 0.4 * len(flagged), (hits, len(flagged))
    assert poison["status"] == "failed"  # 10% flipped labels: a medium finding
    calm = _check(clean, "poisoning")
    assert len(calm["settings"]["flagged_indices"]) < 0.6 * len(flagged)
    # the few doubtful labels of a clean table are worth a look, not a failed check
    assert calm["status"] == "passed", [f["title"] for f in calm["findings"]]


def test_trees_are_stolen_by_sampling_inside_the_contract(clean) -> None:
    ext = _check(clean, "extraction")
    assert ext["tables"][0]["rows"][0][1] == "tree"
    assert ext["metrics"]["fidelity"]["value"] >= 0.9
    assert ext["metrics"]["fidelity"]["n"] == 150


def test_the_data_check_validates_the_tables_against_the_contract(tmp_path) -> None:
    import xgboost as xgb

    frame, y, rules, _ = _table()
    booster = xgb.XGBClassifier(n_estimators=5, max_depth=2, random_state=0)
    booster.fit(frame.iloc[:N_TRAIN], y[:N_TRAIN])
    booster.get_booster().save_model(str(tmp_path / "model.json"))
    files = _files(tmp_path, frame, y, rules)
    test = pd.read_parquet(files["test"])
    test.loc[test.index[:3], "age"] = 150      # beyond the contract's range
    test.loc[test.index[3:5], "region"] = 9    # a code the contract does not know
    test.to_parquet(files["test"])
    config = AuditConfig(model=str(tmp_path / "model.json"), train=files["train"],
                         test=files["test"], contract=files["contract"], label="default",
                         out=tmp_path / "out", only=("data",))
    data = _check(run_audit(config, fresh=True, formats=("json",)).document, "data")
    found = {f["location"]: f for f in data["findings"] if f["id"] == "data.contract-violation"}
    assert "age" in found["test:range"]["evidence"]["columns"]
    assert found["test:range"]["evidence"]["count"] >= 3
    assert "region" in found["test:category"]["evidence"]["columns"]
    assert not any(loc.startswith("train:") for loc in found)
    assert data["metrics"]["valid_rows"]["value"] <= 1 - 5 / 150
