"""Table contracts: a synthetic mixed-type frame and digits as 64 pixel columns + a label."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from bastion.data import load_digits
from bastion.data.contracts import TableContract, infer_contract, validate
from bastion.errors import ConfigurationError

CITIES = ["berlin", "lagos", "lima", "osaka", "perth"]
CITY_P = [0.4, 0.25, 0.15, 0.1, 0.1]


def frame(n: int, seed: int, *, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    score = rng.normal(0.0, 1.0, n)
    score[rng.random(n) < 0.1] = np.nan
    return pd.DataFrame(
        {
            "user_id": [f"u{seed:03d}-{i:05d}" for i in range(n)],
            "amount": rng.normal(50.0 + shift * 10.0, 10.0, n),
            "items": rng.poisson(3, n).astype(np.int64),
            "city": rng.choice(CITIES, n, p=CITY_P),
            "member": rng.random(n) < 0.3,
            "when": pd.Timestamp("2024-01-01")
            + pd.to_timedelta(rng.integers(0, 365 * 24, n), unit="h"),
            "score": score,
        }
    )


@pytest.fixture(scope="module")
def contract() -> TableContract:
    c = infer_contract(frame(2000, 0), name="orders")
    assert isinstance(c, TableContract)
    return c


def test_inferred_columns(contract):
    kinds = {c.name: c.kind for c in contract.columns}
    assert kinds == {
        "user_id": "string",
        "amount": "float",
        "items": "integer",
        "city": "categorical",
        "member": "boolean",
        "when": "datetime",
        "score": "float",
    }
    col = contract.column
    assert col("user_id").unique and not col("amount").unique
    assert col("city").categories == tuple(CITIES)
    assert col("member").categories == (False, True)
    assert col("score").nullable and not col("amount").nullable
    assert contract.reference.missing["score"] == pytest.approx(0.1, abs=0.02)
    assert col("amount").mean == pytest.approx(50.0, abs=1.0)
    assert str(col("when").min).startswith("2024-01-01")
    assert contract.reference.counts["city"]["berlin"] == pytest.approx(800, abs=60)


def test_range_slack(contract):
    amount = contract.column("amount")
    assert amount.slack is not None
    below, above = amount.slack
    # exactly what --range-tolerance says: 10% of (max - min) on each side (and rounding)
    span = amount.max - amount.min
    assert below == pytest.approx(0.1 * span, rel=2e-3)
    assert above == pytest.approx(0.1 * span, rel=2e-3)
    df = frame(4, 7)
    df["amount"] = [
        amount.min - below + 0.01,
        amount.max + above - 0.01,
        amount.min - below - 0.01,
        amount.max + above + 0.01,
    ]
    got = [(v.rule, v.row) for v in validate(df, contract, distribution=False).errors]
    assert got == [("range", 2), ("range", 3)]
    no_slack = dataclasses.replace(
        contract, columns=tuple(dataclasses.replace(c, slack=None) for c in contract.columns)
    )
    df["amount"] = amount.max + 0.11 * (amount.max - amount.min)  # past range_tolerance 0.1
    assert {v.rule for v in validate(df, no_slack, distribution=False).errors} == {"range"}


def test_clean_batches_pass(contract):
    failed = [validate(frame(300, seed), contract).ok for seed in range(1, 11)].count(False)
    assert failed <= 1


def test_every_violation_with_location(contract):
    df = frame(40, 99)
    df["items"] = df["items"].astype(object)
    df.loc[2, "items"] = "many"
    df.loc[4, "items"] = 2.5
    df.loc[3, "amount"] = 1e6
    df.loc[5, "city"] = "atlantis"
    df.loc[7, "amount"] = np.nan
    df.loc[9, "user_id"] = df.loc[1, "user_id"]
    df.loc[11, "when"] = pd.Timestamp("2031-06-01")
    df = df.drop(columns=["member"]).assign(extra=1)
    report = validate(df, contract, distribution=False)
    got = {(v.rule, v.row, v.column) for v in report.errors}
    assert got == {
        ("dtype", 2, "items"),
        ("dtype", 4, "items"),
        ("range", 3, "amount"),
        ("category", 5, "city"),
        ("missing", 7, "amount"),
        ("unique", 9, "user_id"),
        ("range", 11, "when"),
        ("missing_column", None, "member"),
        ("unexpected_column", None, "extra"),
    }
    cat = next(v for v in report.errors if v.rule == "category")
    assert cat.value == "atlantis" and "berlin" in cat.expected
    assert next(v for v in report.errors if v.rule == "range").value == 1e6
    as_json = report.to_dict()
    assert as_json["ok"] is False and as_json["n_errors"] == 9


def test_drift_in_numbers_categories_and_missing_rate(contract):
    shifted = validate(frame(300, 5, shift=0.5), contract)
    assert {d.column for d in shifted.drift if d.drifted} == {"amount"}
    df = frame(300, 6)
    rng = np.random.default_rng(6)
    df["city"] = rng.choice(CITIES, 300, p=[0.1, 0.1, 0.15, 0.25, 0.4])
    df.loc[rng.random(300) < 0.4, "score"] = np.nan
    report = validate(df, contract)
    assert {d.column for d in report.drift if d.drifted} == {"city", "score.missing"}
    city = next(d for d in report.drift if d.column == "city")
    assert city.test == "chi2" and city.psi is not None and city.psi > 0.25
    assert ("psi", "city") in {(v.rule, v.column) for v in report.warnings}


def test_pattern_and_max_missing_are_editable(contract):
    cols = tuple(
        dataclasses.replace(c, pattern=r"u\d{3}-\d{5}")
        if c.name == "user_id"
        else dataclasses.replace(c, max_missing=0.2)
        if c.name == "score"
        else c
        for c in contract.columns
    )
    edited = dataclasses.replace(contract, columns=cols)
    df = frame(30, 3)
    df.loc[4, "user_id"] = "admin"
    df.loc[:14, "score"] = np.nan
    got = {(v.rule, v.row, v.column) for v in validate(df, edited, distribution=False).errors}
    assert got == {("pattern", 4, "user_id"), ("missing_rate", None, "score")}


def test_duplicate_rows(contract):
    df = frame(30, 4)
    df.loc[12] = df.loc[3]
    df.loc[20] = df.loc[6]
    df.loc[20, "amount"] += 1e-4
    report = validate(df, contract, distribution=False)
    assert [v.rule for v in report.errors] == ["unique", "unique"]  # user_id copied
    groups = {(g.rows, g.exact) for g in report.duplicates}
    assert ((3, 12), True) in groups and ((6, 20), False) in groups


@pytest.fixture(scope="module")
def digits_table() -> tuple[pd.DataFrame, pd.DataFrame]:
    d = load_digits()
    df = pd.DataFrame(d.x.numpy().reshape(len(d), 64), columns=[f"px{i}" for i in range(64)])
    df["label"] = d.y.numpy()
    perm = np.random.default_rng(0).permutation(len(df))
    return df.iloc[perm[:1200]].reset_index(drop=True), df.iloc[perm[1200:]].reset_index(drop=True)


def test_digits_table(digits_table):
    ref, held = digits_table
    contract = infer_contract(ref, name="digits", categorical=["label"])
    assert isinstance(contract, TableContract)
    assert contract.column("label").categories == tuple(range(10))
    # the observed range of a sparse corner pixel is narrower than the pixel domain: a data
    # engineer sets it to exactly [0, 1] by editing the contract
    cols = tuple(
        dataclasses.replace(c, min=0.0, max=1.0, slack=(0.0, 0.0)) if c.name != "label" else c
        for c in contract.columns
    )
    contract = dataclasses.replace(contract, columns=cols)
    outcomes = []
    for seed in range(6):
        idx = np.random.default_rng(seed).choice(len(held), 150, replace=False)
        outcomes.append(validate(held.iloc[idx], contract).ok)
    assert outcomes.count(False) <= 1
    bad = held.iloc[:20].copy()
    bad.loc[3, "label"] = 10
    bad.loc[6, "px10"] = 1.7
    bad.loc[8, "px20"] = np.nan
    got = {(v.rule, v.row, v.column) for v in validate(bad, contract).errors}
    assert got == {("category", 3, "label"), ("range", 6, "px10"), ("missing", 8, "px20")}
    bright = held.iloc[:200].copy()
    bright.iloc[:, :64] = (bright.iloc[:, :64] + 0.2).clip(0.0, 1.0)
    report = validate(bright, contract)
    assert report.rules() == {"drift"}
    assert sum(d.drifted for d in report.drift) >= 32


def test_bad_options():
    with pytest.raises(ConfigurationError):
        infer_contract(frame(30, 0), categorical=["nope"])
    c = infer_contract(frame(30, 0))
    with pytest.raises(ConfigurationError):
        validate(frame(30, 1), c, fdr=0.0)
