"""Every tree adapter reproduces its library's own predict_proba, binary and multiclass."""

from __future__ import annotations

import json

import lightgbm as lgb
import numpy as np
import pytest
import torch
import xgboost as xgb
from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.tree import DecisionTreeClassifier

from bastion.errors import ModelLoadError
from bastion.models.trees import (
    Tree,
    TreeEnsemble,
    from_lightgbm_text,
    from_trees,
    from_xgboost_json,
    to_ensemble,
)

FACTORIES = {
    "xgboost": lambda: xgb.XGBClassifier(n_estimators=15, max_depth=4, n_jobs=1, random_state=0),
    "xgboost-dart": lambda: xgb.XGBClassifier(
        booster="dart", n_estimators=8, max_depth=3, n_jobs=1, rate_drop=0.2, random_state=0
    ),
    "lightgbm": lambda: lgb.LGBMClassifier(
        n_estimators=15, max_depth=4, num_leaves=12, n_jobs=1, verbose=-1, random_state=0
    ),
    "decision-tree": lambda: DecisionTreeClassifier(max_depth=5, random_state=0),
    "random-forest": lambda: RandomForestClassifier(n_estimators=10, max_depth=6, random_state=0),
    "extra-trees": lambda: ExtraTreesClassifier(n_estimators=10, max_depth=6, random_state=0),
    "gradient-boosting": lambda: GradientBoostingClassifier(
        n_estimators=10, max_depth=3, random_state=0
    ),
    "hist-gradient-boosting": lambda: HistGradientBoostingClassifier(
        max_iter=10, max_depth=4, random_state=0
    ),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("task", ["binary", "multi"])
def test_adapter_matches_library_predict_proba(name, task, binary_data, multi_data):
    X, y = binary_data if task == "binary" else multi_data
    model = FACTORIES[name]().fit(X, y)
    clf = from_trees(model)
    ens = clf.ensemble
    assert ens.n_classes == (2 if task == "binary" else 3)
    rng = np.random.default_rng(1)
    # Training rows plus rows jittered off the data (different leaves).
    rows = np.vstack(
        [X, X[rng.integers(0, len(X), 100)] * rng.uniform(0.9, 1.1, (100, X.shape[1]))]
    )
    expected = model.predict_proba(rows)
    np.testing.assert_allclose(ens.predict_proba(rows), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ens.predict(rows), model.predict(rows))
    got = torch.softmax(clf.logits(torch.tensor(rows)), dim=1).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert ens.n_trees >= 1 and ens.depth >= 2


def test_structure_is_exposed(binary_data):
    X, y = binary_data
    model = xgb.XGBClassifier(n_estimators=5, max_depth=3, n_jobs=1).fit(X, y)
    ens = to_ensemble(model)
    assert ens.n_trees == 5
    leaves = ens.apply(X[:10])
    assert leaves.shape == (10, 5) and np.all(ens.left[leaves] == -1)
    # Each tree's leaves are its own nodes.
    for t in range(5):
        assert set(leaves[:, t]) <= set(ens.tree_nodes(t))
    assert ens.thresholds(0).size >= 0


def test_xgboost_boundary_is_strict_and_float32():
    # One stump on feature 0: XGBoost sends x < t left; a value equal to t goes right.
    X = np.array([[0.0], [1.0], [2.0], [3.0]] * 5)
    y = np.array([0, 0, 1, 1] * 5)
    model = xgb.XGBClassifier(n_estimators=1, max_depth=1, n_jobs=1).fit(X, y)
    ens = to_ensemble(model)
    t = float(ens.threshold[ens.roots[0]])
    probe = np.array([[t], [np.nextafter(t, -np.inf)], [t + 1e-12]])
    np.testing.assert_allclose(ens.predict_proba(probe), model.predict_proba(probe), rtol=1e-6)


def test_lightgbm_text_round_trip(multi_data):
    X, y = multi_data
    model = lgb.LGBMClassifier(n_estimators=5, num_leaves=6, n_jobs=1, verbose=-1).fit(X, y)
    ens = from_lightgbm_text(model.booster_.model_to_string())
    np.testing.assert_allclose(ens.predict_proba(X), model.predict_proba(X), rtol=1e-6)


def _stump_doc(model) -> dict:
    return json.loads(bytes(model.get_booster().save_raw(raw_format="json")))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda t: t["left_children"].__setitem__(0, 999), "outside"),
        (lambda t: t["left_children"].__setitem__(1, 0), "twice|not reachable|one child"),
        (lambda t: t["split_indices"].__setitem__(0, 77), "feature"),
        (lambda t: t["split_conditions"].__setitem__(0, float("nan")), "non-finite"),
    ],
)
def test_crafted_xgboost_document_is_refused(mutate, message, binary_data):
    X, y = binary_data
    model = xgb.XGBClassifier(n_estimators=2, max_depth=2, n_jobs=1).fit(X, y)
    doc = _stump_doc(model)
    mutate(doc["learner"]["gradient_booster"]["model"]["trees"][0])
    with pytest.raises(ModelLoadError, match=message):
        from_xgboost_json(doc)


def test_crafted_lightgbm_child_is_refused(binary_data):
    X, y = binary_data
    model = lgb.LGBMClassifier(n_estimators=2, num_leaves=4, n_jobs=1, verbose=-1).fit(X, y)
    text = model.booster_.model_to_string()
    bad = text.replace("left_child=", "left_child=57 ", 1)
    bad_lines = []
    for line in bad.split("\n"):
        if line.startswith("left_child=57 "):
            parts = line.split("=")[1].split()
            line = "left_child=" + " ".join(["57", *parts[2:]])
        bad_lines.append(line)
    with pytest.raises(ModelLoadError, match="outside"):
        from_lightgbm_text("\n".join(bad_lines))


def test_validate_refuses_cycle():
    tree = Tree(
        feature=np.array([0, 0, 0]),
        threshold=np.array([0.5, 0.5, 0.0]),
        left=np.array([1, 0, -1]),
        right=np.array([2, 2, -1]),
        value=np.zeros((3, 1)),
    )
    with pytest.raises(ModelLoadError, match="twice"):
        TreeEnsemble.from_trees(
            [tree],
            n_features=1,
            n_classes=2,
            base_score=[0.0],
            link="sigmoid",
            strict=False,
            float32=False,
            source="test",
        )


def test_unsupported_models_are_refused():
    from sklearn.linear_model import LogisticRegression

    X = np.random.default_rng(0).random((30, 3))
    y = (X[:, 0] > 0.5).astype(int)
    with pytest.raises(ModelLoadError, match="not a tree"):
        to_ensemble(LogisticRegression().fit(X, y))
    model = HistGradientBoostingClassifier(
        max_iter=3, categorical_features=[2], random_state=0
    ).fit(np.c_[X[:, :2], (X[:, 2] * 4).astype(int)], y)
    with pytest.raises(ModelLoadError, match="categorical"):
        to_ensemble(model)
