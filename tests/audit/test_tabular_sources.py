"""A tabular audit's inputs: named CSV/Parquet columns in the model's order, the contract's
feature schema in the context."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bastion.audit.config import AuditConfig, parse_config
from bastion.audit.runner import _catalogue, prepare
from bastion.data.contracts import infer_contract, save_contract
from bastion.data.tabular import make_mixed_table
from bastion.errors import ConfigurationError, InputError


@pytest.fixture(scope="module")
def table_files(tmp_path_factory) -> dict[str, Path]:
    import xgboost as xgb

    d = tmp_path_factory.mktemp("tabular-sources")
    frame, y, rules = make_mixed_table(300, seed=1)
    model = xgb.XGBClassifier(n_estimators=5, max_depth=3, random_state=0)
    model.fit(frame, y)
    model.get_booster().save_model(str(d / "model.json"))
    table = frame.copy()
    table["default"] = y
    save_contract(infer_contract(table, immutable=rules["immutable"],
                                 one_hot=rules["one_hot"], categorical=rules["categorical"]),
                  d / "contract.yaml")
    shuffled = table[list(reversed(table.columns))]  # another column order than the model's
    shuffled.iloc[:200].to_csv(d / "train.csv", index=False)
    shuffled.iloc[200:].to_parquet(d / "test.parquet")
    return {"model": d / "model.json", "train": d / "train.csv", "test": d / "test.parquet",
            "contract": d / "contract.yaml", "dir": d}


def _prepare(files: dict[str, Path], **kw):
    config = AuditConfig(model=str(files["model"]), train=files["train"], test=files["test"],
                         out=files["dir"] / "out", **kw)
    return prepare(config, _catalogue(["data"]))


def test_columns_follow_the_model_and_the_schema_reaches_the_context(table_files) -> None:
    import pandas as pd

    p = _prepare(table_files, contract=table_files["contract"], label="default")
    try:
        frame, _, _ = make_mixed_table(300, seed=1)
        names = tuple(frame.columns)
        assert p.ctx.feature_names == names
        assert p.data["test"]["features"] == list(names)
        assert p.data["contract"]["features"] == list(names)
        schema = p.ctx.schema
        assert schema is not None and schema.names == names
        assert schema.immutable[names.index("customer_id")]
        assert schema.integer[names.index("age")]
        assert [[schema.names[i] for i in g] for g in schema.groups] == [
            ["channel_web", "channel_branch", "channel_phone"]]
        assert schema.categories[names.index("region")].tolist() == [0, 1, 2, 3]
        x = p.ctx.test.x.numpy()
        expected = pd.read_parquet(table_files["test"])[list(names)].to_numpy(np.float32)
        np.testing.assert_array_equal(x, expected)
        # the model agrees with its own order of columns
        assert (p.ctx.model.predict(p.ctx.test.x).numpy() == p.ctx.test.y.numpy()).mean() > 0.8
    finally:
        p.model.close()


def test_without_a_contract_there_is_no_schema(table_files) -> None:
    p = _prepare(table_files, label="default")
    p.model.close()
    assert p.ctx.schema is None and p.ctx.feature_names is not None


def test_a_table_lacking_a_model_column_is_refused(table_files) -> None:
    import pandas as pd

    bad = table_files["dir"] / "short.csv"
    pd.read_csv(table_files["train"]).drop(columns=["age"]).to_csv(bad, index=False)
    with pytest.raises(InputError, match=r"lacks the model's column.*age"):
        prepare(AuditConfig(model=str(table_files["model"]), train=bad,
                            test=table_files["test"], label="default"), _catalogue(["data"]))


def test_unknown_label_and_contract_kind_are_refused(table_files, tmp_path) -> None:
    with pytest.raises(InputError, match="no label column 'nope'"):
        _prepare(table_files, label="nope")
    tensor = tmp_path / "tensor.yaml"
    save_contract(infer_contract(np.zeros((4, 2, 2), np.float32)), tensor)
    with pytest.raises(ConfigurationError, match="tensor contract"):
        _prepare(table_files, contract=tensor, label="default")


def test_the_yaml_names_contract_and_label(tmp_path) -> None:
    cfg = parse_config({"model": "m.json", "contract": "c.yaml", "label": "default"},
                       base=tmp_path)
    assert cfg.contract == tmp_path / "c.yaml" and cfg.label == "default"
