"""Empty batches, infinities and pandas' other dtypes: reported, never crashing."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bastion.data.contracts import infer_contract, validate


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {"a": rng.normal(size=100), "n": rng.integers(0, 5, 100), "c": rng.choice(list("xyz"), 100)}
    )


def test_empty_batches_pass(frame):
    tensor = infer_contract(np.random.default_rng(0).random((50, 1, 4, 4)).astype(np.float32))
    empty = validate(np.zeros((0, 1, 4, 4), np.float32), tensor)
    assert empty.ok and empty.n_rows == 0
    table = validate(frame.iloc[:0], infer_contract(frame))
    assert table.ok and table.n_rows == 0


def test_infinities_are_out_of_range_and_json_safe(frame):
    contract = infer_contract(frame)
    report = validate(frame.iloc[:3].assign(a=[np.inf, -np.inf, 0.0]), contract)
    assert [(v.rule, v.row) for v in report.errors] == [("range", 0), ("range", 1)]
    doc = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert doc["violations"][0]["value"] == "inf"
    tensor = infer_contract(np.random.default_rng(0).random((50, 3)).astype(np.float32))
    inf = validate(np.array([[0.5, np.inf, 0.5]], np.float32), tensor)
    assert [(v.rule, v.row, v.index) for v in inf.errors] == [("range", 0, (1,))]


@pytest.mark.parametrize(
    "dtype", [{"n": "Int64"}, {"n": float}, {"c": "category"}, {"c": "string"}]
)
def test_equivalent_dtypes_accepted(frame, dtype):
    contract = infer_contract(frame)
    assert validate(frame.astype(dtype), contract).ok


def test_wrong_kinds_in_table(frame):
    contract = infer_contract(frame)
    bad = frame.iloc[:4].copy()
    bad["a"] = True
    bad["n"] = [1.0, 2.5, 3.0, np.nan]
    got = [(v.rule, v.row, v.column) for v in validate(bad, contract).errors]
    assert got == [("dtype", None, "a"), ("dtype", 1, "n"), ("missing", 3, "n")]
