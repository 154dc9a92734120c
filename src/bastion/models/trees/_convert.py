"""Convert XGBoost, LightGBM and scikit-learn tree models into a :class:`TreeEnsemble`.

Native formats are parsed by bastion itself (XGBoost's JSON document, LightGBM's text model),
so a file's arrays are validated (:func:`~bastion.models.trees.validate_tree`) before any
library sees them. Fitted in-memory models are converted through the same parsers (XGBoost's
``save_raw("json")``, LightGBM's ``model_to_string()``) or, for scikit-learn, from the fitted
arrays.

Refused with :class:`~bastion.errors.ModelLoadError`, naming the reason: categorical splits
(encode categories as integer codes or one-hot columns instead), vector-leaf (multi-output)
trees, linear trees, LightGBM's zero-as-missing routing, non-classification objectives, and
scikit-learn multi-output trees or custom ``init`` estimators.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bastion.errors import ModelLoadError
from bastion.models.trees._ensemble import Link, Tree, TreeEnsemble

__all__ = [
    "SKLEARN_TREE_TYPES",
    "from_lightgbm_text",
    "from_sklearn_trees",
    "from_xgboost_json",
    "to_ensemble",
]


# -- XGBoost ------------------------------------------------------------------------------
def _floats(raw: Any, what: str) -> np.ndarray:
    try:
        if isinstance(raw, str):
            raw = [float(v) for v in raw.strip("[]").split(",") if v.strip()]
        return np.asarray(raw, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"XGBoost model: {what} is not a list of numbers") from exc


def _get(doc: Any, *keys: str) -> Any:
    cur = doc
    for k in keys:
        if not isinstance(cur, Mapping) or k not in cur:
            raise ModelLoadError(
                f"XGBoost model: missing {'/'.join(keys)}; not an XGBoost JSON/UBJ model document"
            )
        cur = cur[k]
    return cur


def from_xgboost_json(
    doc: Mapping[str, Any], *, feature_names: Sequence[str] | None = None
) -> TreeEnsemble:
    """A :class:`TreeEnsemble` from XGBoost's model document (``Booster.save_raw("json")``)."""
    learner = _get(doc, "learner")
    params = _get(learner, "learner_model_param")
    objective = str(_get(learner, "objective", "name"))
    booster = _get(learner, "gradient_booster")
    name = str(_get(booster, "name"))
    weights: np.ndarray | None = None
    if name == "dart":
        weights = _floats(_get(booster, "weight_drop"), "weight_drop")
        model = _get(booster, "gbtree", "model")
    elif name == "gbtree":
        model = _get(booster, "model")
    else:
        raise ModelLoadError(f"XGBoost booster {name!r} is not a tree booster (gbtree or dart)")
    try:
        n_features = int(params["num_feature"])
        num_class = int(params.get("num_class", 0))
        num_target = int(params.get("num_target", 1))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError("XGBoost model: learner_model_param is malformed") from exc
    if num_target != 1:
        raise ModelLoadError("XGBoost multi-target models are not classifiers bastion supports")
    base = _floats(_get(params, "base_score"), "base_score")
    link: Link
    if objective in ("binary:logistic", "binary:logitraw", "reg:logistic"):
        n_classes, link = 2, "sigmoid"
        if objective != "binary:logitraw":
            p = float(base[0])
            if not 0.0 < p < 1.0:
                raise ModelLoadError(f"XGBoost model: base_score {p} is not a probability")
            base = np.array([math.log(p / (1.0 - p))])
        base = base[:1]
    elif objective in ("multi:softprob", "multi:softmax"):
        n_classes, link = num_class, "softmax"
        if base.size == 1:
            base = np.repeat(base, n_classes)
    else:
        raise ModelLoadError(
            f"XGBoost objective {objective!r} is not a classification objective bastion supports "
            "(binary:logistic, binary:logitraw, multi:softprob, multi:softmax)"
        )
    raw_trees = _get(model, "trees")
    tree_info = _get(model, "tree_info")
    if not isinstance(raw_trees, list) or not isinstance(tree_info, list):
        raise ModelLoadError("XGBoost model: trees/tree_info are not lists")
    if len(tree_info) != len(raw_trees):
        raise ModelLoadError(
            f"XGBoost model: {len(tree_info)} tree_info entries for {len(raw_trees)} trees"
        )
    if weights is not None and weights.size != len(raw_trees):
        raise ModelLoadError("XGBoost dart model: weight_drop does not match the trees")
    n_out = 1 if link == "sigmoid" else n_classes
    trees = []
    for i, t in enumerate(raw_trees):
        if not isinstance(t, Mapping):
            raise ModelLoadError(f"XGBoost model: tree {i} is not an object")
        size_leaf = int(_get(t, "tree_param", "size_leaf_vector") or 1)
        if size_leaf > 1:
            raise ModelLoadError("XGBoost vector-leaf (multi_output_tree) models are not supported")
        split_type = np.asarray(t.get("split_type", []), dtype=np.int64)
        if np.any(split_type != 0):
            raise ModelLoadError(
                "XGBoost categorical splits are not supported; encode categories as integer "
                "codes or one-hot columns"
            )
        left = np.asarray(_get(t, "left_children"), dtype=np.int64)
        cls = int(tree_info[i])
        if not 0 <= cls < n_out:
            raise ModelLoadError(
                f"XGBoost model: tree {i} is for output {cls}, not in [0, {n_out})"
            )
        cond = _floats(_get(t, "split_conditions"), f"tree {i} split_conditions")
        if cond.shape != left.shape:
            raise ModelLoadError(f"XGBoost model: tree {i} split_conditions length mismatch")
        value = np.zeros((left.shape[0], n_out))
        value[:, cls] = cond * (1.0 if weights is None else weights[i])
        trees.append(
            Tree(
                feature=np.asarray(_get(t, "split_indices"), dtype=np.int64),
                # XGBoost compares float32 values with float32 thresholds.
                threshold=cond.astype(np.float32).astype(np.float64),
                left=left,
                right=np.asarray(_get(t, "right_children"), dtype=np.int64),
                value=value,
            )
        )
    names = feature_names
    if (
        names is None
        and isinstance(learner.get("feature_names"), list)
        and learner["feature_names"]
    ):
        names = [str(n) for n in learner["feature_names"]]
    return TreeEnsemble.from_trees(
        trees,
        n_features=n_features,
        n_classes=n_classes,
        base_score=base,
        link=link,
        strict=True,
        float32=True,
        source="xgboost",
        feature_names=names,
    )


# -- LightGBM -----------------------------------------------------------------------------
_MAX_LIGHTGBM_TREES = 1_000_000


def _kv_block(lines: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        if "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def from_lightgbm_text(text: str) -> TreeEnsemble:
    """A :class:`TreeEnsemble` parsed from LightGBM's text model (``model_to_string()``)."""
    if not text.startswith("tree\n") and not text.startswith("tree\r\n"):
        raise ModelLoadError("not a LightGBM text model: it does not start with 'tree'")
    blocks = text.replace("\r\n", "\n").split("\n\n")
    header = _kv_block(blocks[0].split("\n"))
    try:
        n_classes = int(header.get("num_class", "1"))
        per_iter = int(header.get("num_tree_per_iteration", "1"))
        n_features = int(header["max_feature_idx"]) + 1
    except (KeyError, ValueError) as exc:
        raise ModelLoadError("LightGBM model: the header lacks num_class/max_feature_idx") from exc
    objective = header.get("objective", "").split()
    obj = objective[0] if objective else ""
    options = dict(o.split(":", 1) for o in objective[1:] if ":" in o)
    average = any(line.strip() == "average_output" for line in blocks[0].split("\n"))
    link: Link
    if obj == "binary":
        n_classes, link, n_out = 2, "sigmoid", 1
        sigmoid = float(options.get("sigmoid", "1"))
    elif obj in ("multiclass", "softmax"):
        link, n_out, sigmoid = "softmax", n_classes, 1.0
    else:
        raise ModelLoadError(
            f"LightGBM objective {obj!r} is not a classification objective bastion supports "
            "(binary, multiclass)"
        )
    if per_iter != n_out:
        raise ModelLoadError(
            f"LightGBM model: {per_iter} trees per iteration for {n_out} output(s)"
        )
    trees: list[Tree] = []
    for block in blocks[1:]:
        lines = [ln for ln in block.strip().split("\n") if ln]
        if not lines or not lines[0].startswith("Tree="):
            if lines and lines[0].startswith("end of trees"):
                break
            continue
        if len(trees) >= _MAX_LIGHTGBM_TREES:
            raise ModelLoadError("LightGBM model: too many trees")
        trees.append(_lightgbm_tree(_kv_block(lines[1:]), len(trees), n_out, sigmoid))
    return TreeEnsemble.from_trees(
        trees,
        n_features=n_features,
        n_classes=n_classes,
        base_score=np.zeros(n_out),
        scale=1.0 / max(1, len(trees) // n_out) if average else 1.0,
        link=link,
        strict=False,
        float32=False,
        source="lightgbm",
        feature_names=header.get("feature_names", "").split() or None,
    )


def _num_list(kv: Mapping[str, str], key: str, i: int, dtype: type) -> np.ndarray:
    try:
        return np.asarray([dtype(v) for v in kv.get(key, "").split()], dtype=dtype)
    except ValueError as exc:
        raise ModelLoadError(f"LightGBM model: tree {i} has a malformed {key}") from exc


def _lightgbm_tree(kv: Mapping[str, str], i: int, n_out: int, sigmoid: float) -> Tree:
    """Relabel LightGBM's (internal nodes 0.., leaves ~k) tree into local node indices."""
    if kv.get("is_linear", "0") != "0":
        raise ModelLoadError("LightGBM linear trees are not supported")
    if kv.get("num_cat", "0") != "0":
        raise ModelLoadError(
            "LightGBM categorical splits are not supported; encode categories as integer codes "
            "or one-hot columns (categorical_feature=[])"
        )
    try:
        n_leaves = int(kv["num_leaves"])
    except (KeyError, ValueError) as exc:
        raise ModelLoadError(f"LightGBM model: tree {i} lacks num_leaves") from exc
    leaf_value = _num_list(kv, "leaf_value", i, float)
    if n_leaves < 1 or leaf_value.shape != (n_leaves,):
        raise ModelLoadError(f"LightGBM model: tree {i} has {leaf_value.size} leaf values")
    n_int = n_leaves - 1
    feat = _num_list(kv, "split_feature", i, int)
    thr = _num_list(kv, "threshold", i, float)
    dtype = _num_list(kv, "decision_type", i, int)
    lc = _num_list(kv, "left_child", i, int)
    rc = _num_list(kv, "right_child", i, int)
    for name, arr in (
        ("split_feature", feat),
        ("threshold", thr),
        ("decision_type", dtype),
        ("left_child", lc),
        ("right_child", rc),
    ):
        if arr.shape != (n_int,):
            raise ModelLoadError(
                f"LightGBM model: tree {i} {name} has {arr.size} entries for {n_int} splits"
            )
    if np.any(dtype & 1):
        raise ModelLoadError("LightGBM categorical splits are not supported")
    if np.any(((dtype >> 2) & 3) == 1):
        raise ModelLoadError(
            "LightGBM zero-as-missing splits are not supported; retrain with zero_as_missing=False"
        )
    n = n_int + n_leaves

    def relabel(c: np.ndarray) -> np.ndarray:
        """Internal node j -> j, leaf ~c -> n_int + ~c; anything out of range -> n (refused)."""
        leaf = np.bitwise_not(c)
        out = np.where(c >= 0, c, n_int + leaf)
        bad = np.where(c >= 0, c >= n_int, leaf >= n_leaves)
        return np.where(bad, n, out)

    left = np.full(n, -1, dtype=np.int64)
    right = np.full(n, -1, dtype=np.int64)
    left[:n_int], right[:n_int] = relabel(lc), relabel(rc)
    feature = np.zeros(n, dtype=np.int64)
    threshold = np.zeros(n)
    feature[:n_int], threshold[:n_int] = feat, thr
    value = np.zeros((n, n_out))
    value[n_int:, i % n_out] = leaf_value * sigmoid
    return Tree(feature=feature, threshold=threshold, left=left, right=right, value=value)


# -- scikit-learn -------------------------------------------------------------------------
SKLEARN_TREE_TYPES = frozenset(
    {
        "DecisionTreeClassifier",
        "ExtraTreeClassifier",
        "RandomForestClassifier",
        "ExtraTreesClassifier",
        "GradientBoostingClassifier",
        "HistGradientBoostingClassifier",
    }
)


def _sk_tree(tree: Any, *, n_classes: int, column: int | None, n_out: int, factor: float) -> Tree:
    """A fitted ``sklearn.tree._tree.Tree``: class frequencies, or one regression column."""
    left = np.asarray(tree.children_left, dtype=np.int64)
    value = np.asarray(tree.value, dtype=np.float64)
    if value.ndim != 3 or value.shape[1] != 1:
        raise ModelLoadError("scikit-learn multi-output trees are not supported")
    if column is None:
        v = value[:, 0, :]
        if v.shape[1] != n_classes:
            raise ModelLoadError("scikit-learn tree: leaf values do not match the classes")
        total = v.sum(axis=1, keepdims=True)
        out = np.divide(v, total, out=np.zeros_like(v), where=total > 0)
    else:
        out = np.zeros((left.shape[0], n_out))
        out[:, column] = value[:, 0, 0] * factor
    return Tree(
        feature=np.asarray(tree.feature, dtype=np.int64),
        threshold=np.asarray(tree.threshold, dtype=np.float64),
        left=left,
        right=np.asarray(tree.children_right, dtype=np.int64),
        value=out,
    )


def _sk_classes(est: Any) -> int:
    classes = np.asarray(getattr(est, "classes_", []))
    if classes.ndim != 1 or not np.array_equal(classes, np.arange(classes.size)):
        raise ModelLoadError(
            f"{type(est).__name__}: classes_ must be 0..k-1, got {classes.tolist()[:10]}; "
            "refit on integer labels (e.g. with LabelEncoder)"
        )
    return int(classes.size)


def _sk_names(est: Any) -> list[str] | None:
    names = getattr(est, "feature_names_in_", None)
    return None if names is None else [str(n) for n in names]


def from_sklearn_trees(est: Any) -> TreeEnsemble:
    """A :class:`TreeEnsemble` from a fitted scikit-learn tree classifier.

    DecisionTree, ExtraTree, RandomForest, ExtraTrees (averaged class frequencies),
    GradientBoosting and HistGradientBoosting (summed margins) classifiers.
    """
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        GradientBoostingClassifier,
        HistGradientBoostingClassifier,
        RandomForestClassifier,
    )
    from sklearn.tree import DecisionTreeClassifier

    k = _sk_classes(est)
    n_features = int(est.n_features_in_)
    names = _sk_names(est)
    kind = f"sklearn.{type(est).__name__}"
    if isinstance(est, DecisionTreeClassifier):
        trees = [_sk_tree(est.tree_, n_classes=k, column=None, n_out=k, factor=1.0)]
        return _forest(trees, n_features, k, kind, names)
    if isinstance(est, RandomForestClassifier | ExtraTreesClassifier):
        trees = [
            _sk_tree(e.tree_, n_classes=k, column=None, n_out=k, factor=1.0)
            for e in est.estimators_
        ]
        return _forest(trees, n_features, k, kind, names)
    if isinstance(est, GradientBoostingClassifier):
        return _sk_gradient_boosting(est, k, n_features, kind, names)
    if isinstance(est, HistGradientBoostingClassifier):
        return _sk_hist_gradient_boosting(est, k, n_features, kind, names)
    raise ModelLoadError(
        f"{type(est).__name__} is not a tree classifier bastion converts; expected XGBoost, "
        "LightGBM or a scikit-learn DecisionTree/RandomForest/ExtraTrees/GradientBoosting/"
        "HistGradientBoosting classifier"
    )


def _forest(
    trees: list[Tree], n_features: int, k: int, kind: str, names: list[str] | None
) -> TreeEnsemble:
    return TreeEnsemble.from_trees(
        trees,
        n_features=n_features,
        n_classes=k,
        base_score=np.zeros(k),
        scale=1.0 / len(trees),
        link="identity",
        strict=False,
        float32=True,
        source=kind,
        feature_names=names,
    )


def _sk_gradient_boosting(
    est: Any, k: int, n_features: int, kind: str, names: list[str] | None
) -> TreeEnsemble:
    from sklearn.dummy import DummyClassifier

    init = est.init_
    if not (init == "zero" or isinstance(init, DummyClassifier)):
        raise ModelLoadError(
            f"{kind}: a custom init estimator makes the model depend on more than its trees"
        )
    base = np.asarray(est._raw_predict_init(np.zeros((1, n_features))), dtype=np.float64)[0]
    n_out = 1 if k == 2 else k
    lr = float(est.learning_rate)
    trees = [
        _sk_tree(est.estimators_[i, c].tree_, n_classes=k, column=c, n_out=n_out, factor=lr)
        for i in range(est.estimators_.shape[0])
        for c in range(est.estimators_.shape[1])
    ]
    return TreeEnsemble.from_trees(
        trees,
        n_features=n_features,
        n_classes=k,
        base_score=base,
        link="sigmoid" if k == 2 else "softmax",
        strict=False,
        float32=True,
        source=kind,
        feature_names=names,
    )


def _sk_hist_gradient_boosting(
    est: Any, k: int, n_features: int, kind: str, names: list[str] | None
) -> TreeEnsemble:
    n_out = 1 if k == 2 else k
    if getattr(est, "is_categorical_", None) is not None and np.any(est.is_categorical_):
        raise ModelLoadError(
            f"{kind}: categorical features are not supported; encode categories as codes "
            "without categorical_features"
        )
    trees: list[Tree] = []
    for iteration in est._predictors:
        for c, predictor in enumerate(iteration):
            nodes = predictor.nodes
            if np.any(nodes["is_categorical"]):
                raise ModelLoadError(
                    f"{kind}: categorical splits are not supported; encode categories as codes "
                    "without categorical_features"
                )
            leaf = nodes["is_leaf"].astype(bool)
            value = np.zeros((nodes.shape[0], n_out))
            value[:, c] = np.where(leaf, nodes["value"], 0.0)
            trees.append(
                Tree(
                    feature=np.asarray(nodes["feature_idx"], dtype=np.int64),
                    threshold=np.asarray(nodes["num_threshold"], dtype=np.float64),
                    left=np.where(leaf, -1, nodes["left"].astype(np.int64)),
                    right=np.where(leaf, -1, nodes["right"].astype(np.int64)),
                    value=value,
                )
            )
    return TreeEnsemble.from_trees(
        trees,
        n_features=n_features,
        n_classes=k,
        base_score=np.asarray(est._baseline_prediction, dtype=np.float64).reshape(-1),
        link="sigmoid" if k == 2 else "softmax",
        strict=False,
        float32=False,
        source=kind,
        feature_names=names,
    )


# -- dispatch -----------------------------------------------------------------------------
def to_ensemble(model: Any) -> TreeEnsemble:
    """A :class:`TreeEnsemble` from any supported fitted model (or a ready ensemble)."""
    if isinstance(model, TreeEnsemble):
        return model
    module = type(model).__module__.split(".")[0]
    if module == "xgboost":
        booster = model.get_booster() if hasattr(model, "get_booster") else model
        names = booster.feature_names
        doc = json.loads(bytes(booster.save_raw(raw_format="json")))
        return from_xgboost_json(doc, feature_names=names)
    if module == "lightgbm":
        booster = model.booster_ if hasattr(model, "booster_") else model
        return from_lightgbm_text(booster.model_to_string())
    if module == "sklearn":
        return from_sklearn_trees(model)
    raise ModelLoadError(
        f"{type(model).__name__} is not a tree model bastion converts; expected an XGBoost or "
        "LightGBM booster/classifier or a scikit-learn tree classifier"
    )
