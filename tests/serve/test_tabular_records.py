"""A tabular model behind the gateway: records keyed by feature name, validated against the
table contract (unknown, missing, non-numeric, out-of-range and unknown-category values are
refused naming the feature)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bastion.data.contracts import infer_contract, save_contract
from bastion.data.tabular import make_mixed_table


@pytest.fixture(scope="module")
def tree_files(tmp_path_factory) -> dict[str, Any]:
    import xgboost as xgb

    d: Path = tmp_path_factory.mktemp("tabular-serve")
    frame, y, rules = make_mixed_table(300, seed=2)
    booster = xgb.XGBClassifier(n_estimators=10, max_depth=3, random_state=0)
    booster.fit(frame, y)
    booster.get_booster().save_model(str(d / "model.json"))
    table = frame.copy()
    table["default"] = y  # the contract describes the label too; it is no model input
    save_contract(infer_contract(table, immutable=rules["immutable"], one_hot=rules["one_hot"],
                                 categorical=rules["categorical"]), d / "contract.yaml")
    return {"model": d / "model.json", "contract": d / "contract.yaml", "frame": frame,
            "booster": booster}


@pytest.fixture
def gateway(make_gateway, tree_files):
    return make_gateway({"model": {
        "path": str(tree_files["model"]), "input_shape": None, "factory": None,
        "factory_kwargs": None, "contract": str(tree_files["contract"]),
        "output": {"policy": "identity"}, "bounds": [-1e12, 1e12]}})


def _post(h, body: dict[str, Any]):
    return h.client.post("/v1/models/digits/predict", json=body, headers=h.headers())


def _records(frame, rows: slice = slice(0, 5)) -> list[dict[str, Any]]:
    return [{k: (int(v) if float(v).is_integer() else float(v)) for k, v in rec.items()}
            for rec in frame.iloc[rows].to_dict(orient="records")]


def test_records_in_any_key_order_get_the_models_answers(gateway, tree_files) -> None:
    frame = tree_files["frame"]
    records = [dict(reversed(list(r.items()))) for r in _records(frame)]
    r = _post(gateway, {"records": records})
    assert r.status_code == 200, r.text
    expected = tree_files["booster"].predict_proba(frame.iloc[:5])
    np.testing.assert_allclose(r.json()["probabilities"], expected, atol=1e-5)
    assert gateway.gateway.model("digits").features == tuple(frame.columns)


def test_the_same_rows_as_lists_are_validated_against_the_cut_contract(gateway, tree_files
                                                                        ) -> None:
    x = tree_files["frame"].iloc[:3].to_numpy(float)
    assert _post(gateway, {"inputs": x.tolist()}).status_code == 200


@pytest.mark.parametrize(("change", "words"), [
    ({"salary": 1.0}, ["unknown feature 'salary'"]),
    ({"age": None}, ["feature 'age'", "expected a number"]),
    ({"region": "north"}, ["feature 'region'", "expected a number"]),
])
def test_bad_records_are_refused_naming_the_feature(gateway, tree_files, change, words) -> None:
    rec = _records(tree_files["frame"], slice(0, 1))[0]
    rec.update(change)
    r = _post(gateway, {"records": [rec]})
    assert r.status_code == 422 and r.json()["error"] == "invalid_input"
    for w in words:
        assert w in r.json()["detail"]


def test_a_missing_feature_is_named(gateway, tree_files) -> None:
    rec = _records(tree_files["frame"], slice(0, 1))[0]
    del rec["n_accounts"]
    r = _post(gateway, {"records": [rec]})
    assert r.status_code == 422 and "lacks feature 'n_accounts'" in r.json()["detail"]


@pytest.mark.parametrize(("column", "value", "rule"), [
    ("age", 400, "range"), ("region", 7, "category"), ("age", 41.5, "dtype"),
])
def test_rule_violations_name_the_column(gateway, tree_files, column, value, rule) -> None:
    recs = _records(tree_files["frame"], slice(0, 2))
    recs[1][column] = value
    r = _post(gateway, {"records": recs})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "contract_violation"
    assert [(v["rule"], v["column"], v["row"]) for v in body["violations"]] == [
        (rule, column, 1)]


def test_records_need_a_table_contract(make_gateway) -> None:
    h = make_gateway()
    r = h.client.post("/v1/models/digits/predict", json={"records": [{"a": 1}]},
                      headers=h.headers())
    assert r.status_code == 422 and "no named records" in r.json()["detail"]
