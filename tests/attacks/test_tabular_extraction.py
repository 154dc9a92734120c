"""Extraction of tabular models: equation solving recovers a logistic regression's weights
(through scikit-learn's scaler, in raw feature units); tree-sampling queries keep to the
data contract; the audit's extraction check reports both with their fidelity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from bastion.attacks.extraction import EquationSolving
from bastion.attacks.extraction.sampling import TreeSampling, schema_queries
from bastion.data.contracts import infer_contract
from bastion.data.tabular import FeatureSchema, make_mixed_table
from bastion.errors import ConfigurationError


@pytest.fixture(scope="module")
def logistic(tmp_path_factory):
    """A scaled logistic regression on breast_cancer, saved with skops, and its weights in
    raw feature units."""
    import skops.io as sio
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from bastion.models.loading import load_model

    d = tmp_path_factory.mktemp("logistic")
    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    pipe.fit(X.iloc[:400], y.iloc[:400])
    sio.dump(pipe, d / "model.skops")
    scaler, lr = pipe[0], pipe[1]
    w = lr.coef_[0] / scaler.scale_
    b = lr.intercept_[0] - float((lr.coef_[0] * scaler.mean_ / scaler.scale_).sum())
    clf = load_model(d / "model.skops", bounds=(float(X.min().min()), float(X.max().max())))
    return {"dir": d, "X": X, "y": y, "w": w, "b": b, "clf": clf}


def test_equation_solving_recovers_the_weights_in_the_columns_ranges(logistic) -> None:
    X = logistic["X"].to_numpy()
    res = EquationSolving(query_budget=200, queries=62, low=X.min(0), high=X.max(0)).extract(
        logistic["clf"], x_eval=torch.tensor(X[400:], dtype=torch.float32))
    assert res.extra["status"] == "exact" and res.fidelity == 1.0
    weight, bias = res.surrogate.weight, res.surrogate.bias
    # binary logistic = softmax over [0, w x + b]: the class difference is the model
    np.testing.assert_allclose((weight[1] - weight[0]).numpy(), logistic["w"], rtol=1e-6,
                               atol=1e-9 * np.abs(logistic["w"]).max())
    assert float(bias[1] - bias[0]) == pytest.approx(logistic["b"], rel=1e-6)


def test_the_query_box_is_validated() -> None:
    with pytest.raises(ConfigurationError, match="both low and high"):
        EquationSolving(query_budget=10, low=[0.0])
    with pytest.raises(ConfigurationError, match="low <= high"):
        EquationSolving(query_budget=10, low=[1.0], high=[0.0])


def test_the_audit_steals_the_logistic_regression_by_equation_solving(logistic) -> None:
    from bastion.audit.config import AuditConfig
    from bastion.audit.runner import run_audit

    d, X, y = logistic["dir"], logistic["X"], logistic["y"]
    for part, rows in (("train", slice(0, 400)), ("test", slice(400, None))):
        X.iloc[rows].assign(target=y.iloc[rows]).to_csv(d / f"{part}.csv", index=False)
    config = AuditConfig(model=str(d / "model.skops"), train=d / "train.csv",
                         test=d / "test.csv", out=d / "out", only=("extraction",),
                         settings={"extraction": {"budget": 2000, "points": 2, "epochs": 2}})
    doc = run_audit(config, fresh=True, formats=("json",)).document
    ext = next(c for c in doc["checks"] if c["name"] == "extraction")
    assert ext["tables"][0]["rows"][0][1] == "equation"
    assert ext["metrics"]["fidelity"]["value"] == 1.0
    assert ext["findings"][0]["id"] == "extraction.high-fidelity"
    assert doc["data"]["test"]["features"][0] == "mean radius"


def test_schema_queries_respect_every_rule() -> None:
    frame, _, rules = make_mixed_table(200, seed=0)
    schema = FeatureSchema.from_contract(infer_contract(
        frame, immutable=rules["immutable"], one_hot=rules["one_hot"],
        categorical=rules["categorical"]))
    pool = frame.to_numpy(float)
    rng = np.random.default_rng(0)
    for share in (0.3, 1.0):
        q = schema_queries(schema, 500, rng, pool, share=share)
        assert int(schema.check(q).sum()) == 0
        ids = q[:, list(schema.names).index("customer_id")]
        assert set(ids) <= set(pool[:, list(schema.names).index("customer_id")])
        seen = {row.tobytes() for row in pool}
        assert sum(row.tobytes() not in seen for row in q) > 400  # new rows, not pool copies


def test_tree_sampling_copies_a_forest(logistic) -> None:
    from sklearn.ensemble import RandomForestClassifier

    from bastion.models.trees import from_trees

    X, y = logistic["X"].to_numpy(), logistic["y"].to_numpy()
    victim = from_trees(RandomForestClassifier(n_estimators=20, max_depth=4, random_state=0)
                        .fit(X[:300], y[:300]))
    schema = FeatureSchema.from_contract(infer_contract(pd.DataFrame(X[:300])))
    res = TreeSampling(query_budget=800, schema=schema, n_trees=30, rounds=2).extract(
        victim, x_pool=torch.tensor(X[300:400]), x_eval=torch.tensor(X[400:]))
    assert res.queries == 800 and len(res.history) == 2
    assert res.fidelity is not None and res.fidelity >= 0.9
    assert res.surrogate.ensemble.n_trees == 30
