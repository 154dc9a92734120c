"""Contract YAML round trip and hand edits; CSV, Parquet, .npy and .npz inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from bastion.data import load_digits
from bastion.data.contracts import (
    TableContract,
    dump_contract,
    infer_contract,
    load_contract,
    load_data,
    parse_contract,
    save_contract,
    validate,
)
from bastion.errors import DataContractError, InputError


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 300
    return pd.DataFrame(
        {
            "x": rng.normal(size=n),
            "k": rng.integers(0, 1000, n),
            "color": rng.choice(["red", "green", "blue"], n),
            "t": pd.date_range("2024-03-01", periods=n, freq="D"),
            "ok": rng.random(n) < 0.5,
        }
    )


def test_yaml_round_trip(tmp_path, table):
    images = load_digits().x.numpy()[:300]
    for contract in (infer_contract(table, name="t"), infer_contract(images, name="img")):
        path = save_contract(contract, tmp_path / f"{contract.name}.yaml")
        text = path.read_text()
        assert text.startswith("# bastion data contract") and "version: 1" in text
        again = load_contract(path)
        assert again == contract
        assert dump_contract(again) == text


def test_hand_edited_yaml(tmp_path, table):
    contract = infer_contract(table, name="t")
    doc = yaml.safe_load(dump_contract(contract))
    for col in doc["columns"]:
        if col["name"] == "x":
            col["min"], col["max"] = -1.0, 1.0
            del col["slack"]  # now range_tolerance applies: [-1.2, 1.2]
        if col["name"] == "color":
            col["categories"] = ["red", "green"]
    text = "# tightened by hand\n" + yaml.safe_dump(doc, sort_keys=False)
    edited = parse_contract(text)
    assert isinstance(edited, TableContract)
    report = validate(table.iloc[:50], edited, distribution=False)
    rules = {v.rule for v in report.errors}
    assert rules == {"range", "category"}
    assert all(v.column == "color" for v in report.errors if v.rule == "category")
    assert {v.row for v in report.errors if v.rule == "category"} == set(
        np.flatnonzero(table["color"].iloc[:50].to_numpy() == "blue")
    )


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("version: [1\n", "not valid YAML"),
        ("- just a list\n", "mapping"),
        ("version: 2\nkind: table\nname: a\ncolumns: []\n", "unsupported contract version"),
        ("version: 1\nkind: graph\nname: a\n", "kind must be"),
        ("version: 1\nkind: table\nname: a\ncolumns: [{name: a, kind: money}]\n", "kind must be"),
        ("version: 1\nkind: table\nname: a\n", "missing required key 'columns'"),
        (
            "version: 1\nkind: tensor\nname: a\nshape: [null, -3]\ndtype: f\nmin: 0\nmax: 1\n",
            "positive sizes",
        ),
        (
            "version: 1\nkind: table\nname: a\ncolumns: [{name: a, kind: float, min: yes}]\n",
            "number",
        ),
        (
            "version: 1\nkind: table\nname: a\ncolumns: [{name: a, kind: float, slack: [1]}]\n",
            "slack",
        ),
    ],
)
def test_bad_contracts_rejected(text, fragment):
    with pytest.raises(DataContractError, match=fragment):
        parse_contract(text)


def test_python_tags_never_loaded(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(DataContractError, match="not valid YAML"):
        load_contract(path)


def test_csv_and_parquet_inputs(tmp_path, table):
    contract = infer_contract(table, name="t")
    table.to_csv(tmp_path / "ref.csv", index=False)
    table.to_parquet(tmp_path / "ref.parquet")
    from_csv = infer_contract(tmp_path / "ref.csv", name="t")
    # CSV has no dtypes: ISO dates in text are still recognised, and the same checks apply
    assert {c.name: c.kind for c in from_csv.columns} == {c.name: c.kind for c in contract.columns}
    assert from_csv.column("t").min == "2024-03-01T00:00:00+00:00"
    late = table.iloc[:40].copy()
    late.loc[5, "t"] = pd.Timestamp("2030-01-01")
    late["t"] = late["t"].astype(str)
    late.loc[9, "t"] = "not a date"
    got = {(v.rule, v.row) for v in validate(late, from_csv, distribution=False).errors}
    assert got == {("range", 5), ("dtype", 9)}
    assert validate(tmp_path / "ref.parquet", contract).ok
    csv_report = validate(tmp_path / "ref.csv", contract)  # dates parsed from ISO text
    assert csv_report.ok, csv_report.summary()
    bad = table.iloc[:30].copy()
    bad.loc[4, "color"] = "purple"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    report = validate(tmp_path / "bad.csv", contract, distribution=False)
    got = [(v.rule, v.row, v.column) for v in report.errors]
    assert got == [("category", 4, "color")]


def test_numpy_files(tmp_path):
    x = load_digits().x.numpy()[:400]
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "xy.npz", x=x, y=np.zeros(len(x)))
    np.savez(tmp_path / "two.npz", a=x, b=x)
    contract = infer_contract(tmp_path / "x.npy", name="d")
    assert contract.shape == (None, 1, 8, 8)
    assert validate(tmp_path / "xy.npz", contract).ok
    with pytest.raises(InputError, match="name the data array 'x'"):
        load_data(tmp_path / "two.npz")
    (tmp_path / "data.txt").write_text("1,2")
    with pytest.raises(InputError, match="unknown data format"):
        load_data(tmp_path / "data.txt")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match="cannot read"):
        load_data(tmp_path / "broken.parquet")


def test_arrays_and_dicts_as_tables(table):
    numeric = table[["x", "k"]]
    contract = infer_contract(numeric.to_numpy(dtype=float), kind="table", name="arr")
    assert [c.name for c in contract.columns] == ["c0", "c1"]
    bad = numeric.to_numpy(dtype=float)[:30].copy()
    bad[4, 1] = 5000.0
    report = validate(bad, contract, distribution=False)
    assert [(v.rule, v.row, v.column) for v in report.errors] == [("range", 4, "c1")]
    named = infer_contract(numeric, name="df")
    by_name = validate(numeric.to_numpy()[:30], named, distribution=False)  # columns by position
    assert by_name.ok
    as_dict = validate({"x": [0.1, 0.2], "k": [1, 2]}, named, distribution=False)
    assert as_dict.ok and as_dict.n_rows == 2
    one_row = validate(np.array([0.0, 3.0]), named, distribution=False)
    assert one_row.ok and one_row.n_rows == 1
    with pytest.raises(InputError, match="2-D"):
        validate(np.zeros((2, 2, 2)), named)


def test_hand_written_contract_without_reference():
    contract = parse_contract(
        "# written by a person\n"
        "version: 1\nkind: table\nname: people\n"
        "columns:\n"
        "  - {name: age, kind: integer, min: 0, max: 120, slack: [0, 0]}\n"
        "  - {name: country, kind: categorical, categories: [DE, FR]}\n"
        "  - {name: email, kind: string, nullable: true, pattern: '[^@]+@[^@]+'}\n"
    )
    df = pd.DataFrame({
        "age": [30, 121, 40, 7],
        "country": ["DE", "FR", "IT", "DE"],
        "email": ["a@b.c", None, "nope", "x@y.z"],
    })
    report = validate(df, contract)
    assert report.drift == ()
    got = {(v.rule, v.row, v.column) for v in report.errors}
    assert got == {("range", 1, "age"), ("category", 2, "country"), ("pattern", 2, "email")}
    tensor = parse_contract("version: 1\nkind: tensor\nname: v\nshape: [null, 3]\n"
                            "dtype: float64\nmin: -1\nmax: 1\nrange_tolerance: 0\n")
    bad = validate(np.array([[0.0, 0.5, -1.5], [0.0, 0.0, 0.0]]), tensor)
    assert [(v.rule, v.row, v.index) for v in bad.errors] == [("range", 0, (2,))]
