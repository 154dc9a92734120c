"""Tabular rules: contract fields, the schema's projection, and every attack obeying it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xgboost as xgb
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

from bastion.attacks.evasion.catalog import ATTACKS, build_attack, kind_of
from bastion.cli.main import app
from bastion.data.contracts import (
    dump_contract,
    infer_contract,
    load_contract,
    parse_contract,
    validate,
)
from bastion.data.tabular import FeatureSchema, make_mixed_table, to_frame
from bastion.errors import ConfigurationError, InputError
from bastion.models.sklearn_model import from_sklearn
from bastion.models.trees import from_trees


@pytest.fixture(scope="module")
def table():
    frame, y, rules = make_mixed_table(400, seed=0)
    contract = infer_contract(
        frame,
        immutable=rules["immutable"],
        one_hot=rules["one_hot"],
        categorical=rules["categorical"],
        costs={"f0": 2.0},
    )
    return frame, y, contract, FeatureSchema.from_contract(contract)


def test_contract_records_attack_rules(table, tmp_path):
    frame, _, contract, schema = table
    again = parse_contract(dump_contract(contract))
    assert again.column("customer_id").immutable
    assert again.column("f0").cost == 2.0
    assert again.column("channel_web").one_hot == "channel"
    assert FeatureSchema.from_contract(again).to_dict() == schema.to_dict()
    assert schema.groups == ((8, 9, 10),) and schema.immutable[11] and 7 in schema.categories
    with pytest.raises(ConfigurationError, match="unknown columns"):
        infer_contract(frame, immutable=["nope"])


def test_infer_contract_cli_takes_rules(table, tmp_path):
    frame = table[0]
    csv = tmp_path / "t.csv"
    frame.to_csv(csv, index=False)
    out = tmp_path / "c.yaml"
    args = [
        "data",
        "infer-contract",
        str(csv),
        "-o",
        str(out),
        "--immutable",
        "customer_id",
        "--cost",
        "age=0.5",
        "--one-hot",
        "channel=channel_web,channel_branch,channel_phone",
        "-c",
        "region",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    c = load_contract(out)
    assert c.column("customer_id").immutable and c.column("age").cost == 0.5
    bad = CliRunner().invoke(app, [*args[:5], "--cost", "age"])
    assert bad.exit_code == 2 and "COLUMN=NUMBER" in bad.output


def test_projection_moves_towards_the_original(table):
    frame, _, contract, schema = table
    x0 = frame.to_numpy(dtype=np.float64)[:50]
    rng = np.random.default_rng(0)
    noisy = x0 + rng.normal(0, 3, x0.shape)
    for eps in (0.5, 2.0):
        delta = np.clip(noisy - x0, -eps, eps)
        out = schema.project(x0 + delta, x0, norm="linf", eps=eps)
        assert np.all(schema.check(out, x0) == 0)
        assert np.all(np.abs(out - x0).max(axis=1) <= eps + 1e-12)
        assert not validate(to_frame(out, frame), contract, distribution=False).errors
    assert np.all(schema.check(noisy, x0) > 0)
    # Below a one-hot change's distance (1) the group keeps its original value.
    out = schema.project(x0 + np.clip(noisy - x0, -0.5, 0.5), x0, norm="linf", eps=0.5)
    np.testing.assert_array_equal(out[:, 8:11], x0[:, 8:11])


def _models(table):
    frame, y, _, schema = table
    X = frame.to_numpy(dtype=np.float64)
    X_model = X.copy()
    X_model[:, 11] = 0.0  # the id carries no signal; keep the linear model well-conditioned
    lin = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)
    white = from_sklearn(lin, bounds=schema.bounds)
    trees = xgb.XGBClassifier(n_estimators=20, max_depth=3, n_jobs=1, random_state=0).fit(X, y)
    return white, from_trees(trees, bounds=schema.bounds)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_respects_the_schema(name, table):
    frame, y, contract, schema = table
    white, tree = _models(table)
    overrides = {
        "fgsm": {},
        "pgd": {"steps": 10},
        "apgd-ce": {"steps": 10},
        "apgd-dlr": {"steps": 10},
        "apgd-t": {"steps": 10},
        "cw": {"steps": 10, "binary_search_steps": 2},
        "deepfool": {},
        "square": {"max_queries": 60},
        "hopskipjump": {"max_queries": 60},
        "autoattack": {},
    }[name]
    attack = build_attack(name, norm="linf" if name != "cw" else "l2", eps=1.5, **overrides)
    model = white if kind_of(attack) == "white-box" else tree
    x = torch.tensor(frame.to_numpy(dtype=np.float64)[:12])
    if name == "square":  # square windows of pixels: refused on feature vectors, clearly
        with pytest.raises(ConfigurationError, match="feature vectors"):
            attack.generate(model, x, torch.tensor(y[:12]), constraints=schema)
        return
    res = attack.generate(model, x, torch.tensor(y[:12]), constraints=schema)
    adv = res.x_adv.double().numpy()
    assert np.all(schema.check(adv, x.numpy()) == 0)
    assert not validate(to_frame(adv, frame.iloc[:12]), contract, distribution=False).errors
    assert np.all(adv[:, 11] == x.numpy()[:, 11])  # the immutable id never moves


def test_rows_already_breaking_the_rules_are_refused(table):
    frame, _, _, schema = table
    _, tree = _models(table)
    x = torch.tensor(frame.to_numpy(dtype=np.float64)[:3])
    x[0, 5] = 20.5  # a fractional age
    attack = build_attack("square", norm="linf", eps=1.0, max_queries=10)
    with pytest.raises(InputError, match="break the schema"):
        attack.generate(tree, x, constraints=schema)


@pytest.mark.parametrize("fast", [False, True])
def test_tree_attacks_respect_the_schema(table, fast):
    from bastion.attacks.trees import ExactTreeAttack, FastTreeAttack

    frame, y, contract, schema = table
    _, tree = _models(table)
    x = torch.tensor(frame.to_numpy(dtype=np.float64)[:10])
    attack = FastTreeAttack() if fast else ExactTreeAttack(time_limit=20)
    res = attack.generate(tree, x, torch.tensor(y[:10]), constraints=schema)
    adv = res.x_adv.numpy()
    assert np.all(schema.check(adv, x.numpy()) == 0)
    assert not validate(to_frame(adv, frame.iloc[:10]), contract, distribution=False).errors
    ok = res.clean_correct
    assert bool(res.success[ok].any())  # the rules leave room to evade this model


@pytest.mark.parametrize(
    "name", ["pgd", "apgd-ce", "apgd-dlr", "apgd-t", "autoattack", "hopskipjump"]
)
def test_iterative_attacks_project_every_iterate(name, table):
    """The model never sees an input outside the rules: the projection is in the loop."""
    frame, y, _, schema = table
    white, tree = _models(table)
    steps = {"hopskipjump": {"max_queries": 80}, "autoattack": {}}.get(name, {"steps": 8})
    attack = build_attack(name, norm="linf", eps=1.5, **steps)
    model = white if kind_of(attack) == "white-box" else tree
    seen: list[np.ndarray] = []
    for method in ("logits", "predict"):
        original = getattr(model, method)

        def spy(xq, _original=original, **kw):
            seen.append(xq.detach().double().cpu().numpy())
            return _original(xq, **kw)

        setattr(model, method, spy)
    x = torch.tensor(frame.to_numpy(dtype=np.float64)[:12])
    res = attack.generate(model, x, torch.tensor(y[:12]), constraints=schema)
    queried = np.concatenate(seen)
    assert queried.shape[0] > 2 * x.shape[0]  # the attack iterated
    assert int((schema.check(queried) > 0).sum()) == 0
    assert set(queried[:, 11]) <= set(x.numpy()[:, 11])  # the immutable id never moves
    assert np.all(schema.check(res.x_adv.double().numpy(), x.numpy()) == 0)
