"""The evasion check on tree ensembles: the fast tree attack and exact certificates, within the
table's rules, on a planted weakness (an easily evaded fraud model) and a robust model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xgboost as xgb
from typer.testing import CliRunner

from bastion.audit.checks.evasion import EvasionCheck
from bastion.audit.contract import AuditContext
from bastion.audit.findings import Severity
from bastion.cli.main import app
from bastion.data.contracts import infer_contract, save_contract
from bastion.data.loaders import Dataset
from bastion.data.tabular import FeatureSchema
from bastion.models.trees import from_trees
from bastion.threat import Access, ThreatModel

EPS = 0.5


def fraud_table(n: int, *, margin: float, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Card transactions: scaled amount, velocity and merchant risk, the hour, the number of
    cards, a merchant category code, a one-hot channel and an immutable customer id. Fraud
    follows the amount and velocity; ``margin`` > 0 keeps only transactions at least that far
    from the decision line (a model that can be robust at a smaller eps)."""
    rng = np.random.default_rng(seed)
    rows = []
    while sum(len(r) for r in rows) < n:
        amount, velocity, risk = rng.normal(0, 1, (3, 4 * n))
        score = amount + 0.5 * velocity
        keep = np.abs(score) >= margin
        rows.append(np.stack([amount, velocity, risk, score], axis=1)[keep])
    a = np.concatenate(rows)[:n]
    noise = 0.0 if margin > 0 else 0.6
    fraud = (a[:, 3] + noise * rng.normal(0, 1, n) > 0).astype(np.int64)
    frame = pd.DataFrame({"amount_z": a[:, 0], "velocity_z": a[:, 1], "merchant_risk": a[:, 2]})
    frame["hour"] = rng.integers(0, 24, n)
    frame["n_cards"] = rng.integers(1, 6, n)
    frame["merchant_category"] = rng.integers(0, 5, n)
    channel = rng.integers(0, 3, n)
    for k, name in enumerate(("web", "pos", "phone")):
        frame[f"channel_{name}"] = (channel == k).astype(np.int64)
    frame["customer_id"] = np.arange(1000, 1000 + n)
    return frame, fraud


RULES = {
    "immutable": ["customer_id"],
    "one_hot": {"channel": ["channel_web", "channel_pos", "channel_phone"]},
    "categorical": ["merchant_category"],
}


def _model(robust: bool):
    frame, y = fraud_table(500, margin=1.5 if robust else 0.0)
    params = {"n_estimators": 10, "max_depth": 2}
    if not robust:
        params = {"n_estimators": 40, "max_depth": 4}
    model = xgb.XGBClassifier(**params, n_jobs=1, random_state=0).fit(frame[:350], y[:350])
    return frame, y, model


def _context(robust: bool) -> AuditContext:
    frame, y, model = _model(robust)
    contract = infer_contract(frame, **RULES)
    schema = FeatureSchema.from_contract(contract)
    x = torch.tensor(frame.to_numpy(np.float64)[350:])
    settings = {"evasion": {**EvasionCheck.defaults, "max_samples": 40, "subset": "first"}}
    return AuditContext(
        seed=0,
        model=from_trees(model, bounds=schema.bounds),
        test=Dataset(x, torch.tensor(y[350:]), 2, bounds=schema.bounds),
        threat=ThreatModel(eps=EPS),
        domain="tabular",
        settings=settings,
        contract=contract,
        schema=schema,
    )


@pytest.mark.parametrize("robust", [False, True])
def test_planted_fraud_weakness_is_found_and_certificates_hold(robust: bool) -> None:
    ctx = _context(robust)
    result = EvasionCheck().run(ctx)
    assert result.settings["attacks"] == ["tree-fast"]
    certified = result.metrics["certified_robust_accuracy"]
    empirical = result.metrics["robust_accuracy"]
    assert certified.ci_method == "clopper-pearson" and certified.n == 40
    # a certificate is never contradicted: certified <= empirical, and no warning says so
    assert certified.value <= empirical.value
    assert not any("certified" in w for w in result.settings["warnings"])
    (table,) = [t for t in result.tables if t["title"].startswith("Certified")]
    assert "0 certificates contradicted" in table["rows"][1][3]
    serious = [f for f in result.findings if f.severity.rank >= Severity.MEDIUM.rank]
    if robust:
        assert result.status == "passed" and not serious
        assert certified.value >= 0.9  # proven, not only "the attacks failed"
    else:
        assert result.status == "failed"
        (finding,) = serious
        assert finding.id == "evasion.low-robust-accuracy"
        assert finding.evidence["certified_robust_accuracy"] == certified.value
        assert "robust splitting" in finding.remediation
        assert empirical.value < 0.5


def test_label_only_access_certifies_without_the_structure_attack() -> None:
    from dataclasses import replace

    ctx = _context(robust=False)
    settings = {"evasion": {**ctx.settings["evasion"], "max_queries": 60, "max_samples": 12}}
    ctx = replace(ctx, threat=ThreatModel(eps=EPS, access=Access.LABELS), settings=settings)
    result = EvasionCheck().run(ctx)
    assert result.settings["attacks"] == ["hopskipjump"]
    assert (
        result.metrics["certified_robust_accuracy"].value
        <= result.metrics["robust_accuracy"].value
    )


def test_tree_audit_reports_certified_accuracy(tmp_path: Path) -> None:
    """``bastion audit`` on an XGBoost file with a contract: the certified figure reaches the
    document, report.html and report.md."""
    frame, y, model = _model(robust=False)
    model.get_booster().save_model(str(tmp_path / "fraud.json"))
    table = frame.copy()
    table["fraud"] = y
    save_contract(infer_contract(table, **RULES), tmp_path / "contract.yaml")
    table.iloc[:350].to_csv(tmp_path / "train.csv", index=False)
    table.iloc[350:].to_csv(tmp_path / "test.csv", index=False)
    (tmp_path / "audit.yaml").write_text("checks:\n  evasion: {max_samples: 24}\n")
    out = tmp_path / "audit"
    res = CliRunner().invoke(
        app,
        [
            "audit", "--model", str(tmp_path / "fraud.json"), "--test", str(tmp_path / "test.csv"),
            "--label", "fraud", "--contract", str(tmp_path / "contract.yaml"), "--eps", str(EPS),
            "--checks", "evasion", "--config", str(tmp_path / "audit.yaml"), "--out", str(out),
            "-q", "--format", "json,html,md",
        ],
    )
    assert res.exit_code in (0, 1), res.output
    doc = json.loads((out / "report.json").read_text())
    (check,) = [c for c in doc["checks"] if c["name"] == "evasion"]
    assert check["status"] == "failed"
    cert = check["metrics"]["certified_robust_accuracy"]
    assert cert["value"] <= check["metrics"]["robust_accuracy"]["value"]
    assert "certified robust accuracy" in (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert "Certified vs empirical robust accuracy" in html and "certified robust accuracy" in html


def test_rows_the_contract_rejects_are_left_out_not_an_error() -> None:
    """Test rows no real input could be (here an hour past 23 and a category the contract does
    not know) are no sample of robustness: the check leaves them out and says how many; a test
    set with no acceptable row is a clear configuration error."""
    from dataclasses import replace

    from bastion.errors import ConfigurationError

    ctx = _context(robust=True)
    x = ctx.test.x.clone()
    cols = list(fraud_table(1, margin=0.0)[0].columns)
    x[0, cols.index("hour")] = 99.0
    x[3, cols.index("merchant_category")] = 2.5
    ctx = replace(ctx, test=Dataset(x, ctx.test.y, 2, bounds=ctx.schema.bounds))
    result = EvasionCheck().run(ctx)
    assert result.settings["rows_outside_contract"] == 2
    assert result.metrics["robust_accuracy"].n == 40  # 40 of the remaining rows
    assert "2 test row(s) the data contract rejects were left out" in result.summary
    x[:, cols.index("hour")] = 99.0
    ctx = replace(ctx, test=Dataset(x, ctx.test.y, 2, bounds=ctx.schema.bounds))
    with pytest.raises(ConfigurationError, match="all 150 test rows break"):
        EvasionCheck().run(ctx)


def test_tree_attack_over_several_blocks_keeps_every_samples_distance() -> None:
    """Samples are attacked in blocks (the units a Ray or process executor spreads): the tree
    attack's per-sample distances of all blocks are joined in order, so the certificates and
    the curve see every sample, the same as in one block."""
    from dataclasses import replace

    ctx = _context(robust=False)
    one = EvasionCheck().run(ctx)
    settings = {"evasion": {**ctx.settings["evasion"], "block": 16}}
    many = EvasionCheck().run(replace(ctx, settings=settings))
    assert many.status == one.status == "failed"
    for name in ("robust_accuracy", "certified_robust_accuracy"):
        assert many.metrics[name].value == one.metrics[name].value
        assert many.metrics[name].n == 40
