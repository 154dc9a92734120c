"""The membership, extraction, inversion and poisoning checks: each catches the weakness
planted in a small digits model, stays quiet (or below high) without it, explains what it
cannot run, repeats exactly under one seed, and returns data the audit schema accepts."""

from __future__ import annotations

import json
from dataclasses import replace
from importlib import resources
from typing import Any

import jsonschema
import pytest
import torch
from torch import nn

from bastion.attacks.extraction import black_box
from bastion.attacks.poisoning import BadNets
from bastion.audit.checks.extraction import ExtractionCheck
from bastion.audit.checks.inversion import InversionCheck
from bastion.audit.checks.membership import MembershipCheck
from bastion.audit.checks.poisoning import PoisoningCheck
from bastion.audit.contract import AuditContext, Check, CheckResult
from bastion.audit.findings import Severity
from bastion.data import load_digits
from bastion.data.loaders import Dataset
from bastion.models import TorchClassifier
from bastion.models.zoo import small_cnn, small_mlp, train_classifier
from bastion.threat import Access, ThreatModel

FAST_MEMBERSHIP = {"n_reference": 2, "reference_epochs": 10, "max_samples": 200, "bootstrap": 50}


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_digits()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    return data.x[perm], data.y[perm]


def _ctx(net: nn.Module, train: Dataset | None, test: Dataset | None, **kw: Any) -> AuditContext:
    clf = TorchClassifier(net, input_shape=(1, 8, 8), num_classes=10, bounds=(0.0, 1.0))
    return AuditContext(seed=0, model=clf, train=train, test=test, domain="image", **kw)


@pytest.fixture(scope="module")
def general(digits: tuple[torch.Tensor, torch.Tensor]) -> AuditContext:
    """A small CNN trained 10 epochs on 1,400 digits: generalises (test accuracy ~0.98)."""
    x, y = digits
    torch.manual_seed(0)
    net = train_classifier(
        small_cnn((1, 8, 8), 10, width=8), x[:1400], y[:1400], epochs=10, lr=3e-3, seed=0
    )
    return _ctx(net, Dataset(x[:1400], y[:1400], 10), Dataset(x[1400:], y[1400:], 10))


@pytest.fixture(scope="module")
def overfit(digits: tuple[torch.Tensor, torch.Tensor]) -> AuditContext:
    """A wide MLP fitted for 100 epochs to only 100 digits: memorises its training set."""
    x, y = digits
    torch.manual_seed(0)
    net = train_classifier(
        small_mlp(64, 10, hidden=256), x[:100], y[:100], epochs=100, lr=3e-3, seed=0
    )
    return _ctx(
        net,
        Dataset(x[:100], y[:100], 10),
        Dataset(x[1400:], y[1400:], 10),
        settings={"membership": FAST_MEMBERSHIP},
    )


def _validate(check: Check, result: CheckResult) -> dict[str, Any]:
    """The check's part of an audit document, validated against the schema."""
    schema = json.loads(
        resources.files("bastion.audit").joinpath("schemas/audit-1.schema.json").read_text()
    )
    doc = {
        "name": check.name,
        "title": check.title,
        "threat": check.threat,
        "practices": list(check.practices),
        "status": result.status,
        "summary": result.summary,
        "seconds": 0.0,
        "settings": result.settings,
        "metrics": {k: m.to_dict() for k, m in result.metrics.items()},
        "findings": [f.to_dict() for f in result.findings],
        "plots": result.plots,
        "tables": result.tables,
    }
    doc = json.loads(json.dumps(doc))  # what the document holds: plain JSON
    jsonschema.validate(doc, {"$defs": schema["$defs"], "$ref": "#/$defs/check"})
    for name, metric in doc["metrics"].items():
        if metric["ci"] is None and metric["n"] and 0 <= (metric["value"] or 0) <= 1:
            assert "auc" not in name and "fraction" not in name and "tpr" not in name, name
    return doc


# -- membership -------------------------------------------------------------------------------
def test_membership_catches_the_overfit_model(overfit: AuditContext) -> None:
    check = MembershipCheck()
    assert check.requires(overfit) is None
    result = check.run(overfit)
    doc = _validate(check, result)
    assert result.status == "failed"
    ids = {f.id: f for f in result.findings}
    assert "membership.lira" in ids and "membership.loss-threshold" in ids
    assert max(f.severity.rank for f in result.findings) >= Severity.MEDIUM.rank
    assert result.metrics["lira.auc"].value > 0.6
    lo, hi = result.metrics["lira.auc"].ci
    assert lo < result.metrics["lira.auc"].value < hi
    tpr = doc["metrics"]["lira.tpr_at_1pct_fpr"]
    assert tpr["ci_method"] == "clopper-pearson" and tpr["n"] == 100
    roc = doc["plots"][0]
    assert roc["kind"] == "roc" and roc["log_x"] and roc["log_y"]
    assert all(v > 0 for s in roc["series"] for v in s["x"] + s["y"])
    assert ids["membership.lira"].fingerprint == ids["membership.lira"].to_dict()["fingerprint"]


def test_membership_is_repeatable_under_one_seed(overfit: AuditContext) -> None:
    a, b = MembershipCheck().run(overfit), MembershipCheck().run(overfit)
    assert {k: m.to_dict() for k, m in a.metrics.items()} == {
        k: m.to_dict() for k, m in b.metrics.items()
    }
    c = MembershipCheck().run(replace(overfit, seed=1))
    assert c.metrics["lira.auc"].value != a.metrics["lira.auc"].value


def test_membership_rates_a_generalising_model_below_high(general: AuditContext) -> None:
    ctx = replace(general, settings={"membership": FAST_MEMBERSHIP})
    result = MembershipCheck().run(ctx)
    _validate(MembershipCheck(), result)
    assert all(f.severity.rank < Severity.HIGH.rank for f in result.findings)
    assert result.metrics["lira.auc"].value < 0.65


def test_membership_without_the_member_set_is_not_run(general: AuditContext) -> None:
    req = MembershipCheck().requires(replace(general, train=None))
    assert req is not None and "--train" in req.reason and "member" in req.reason
    assert req.enable and "--train" in req.enable
    req = MembershipCheck().requires(replace(general, test=None))
    assert req is not None and "--test" in req.reason


# -- extraction -------------------------------------------------------------------------------
def test_extraction_with_full_scores_and_a_big_budget_is_a_finding(general: AuditContext) -> None:
    ctx = replace(general, query_budget=10_000)
    result = ExtractionCheck().run(ctx)
    doc = _validate(ExtractionCheck(), result)
    assert result.status == "failed"
    (finding,) = result.findings
    assert finding.id == "extraction.high-fidelity" and finding.severity == Severity.HIGH
    assert result.metrics["fidelity"].value >= 0.9
    curve = doc["plots"][0]
    assert curve["kind"] == "line" and len(curve["series"][0]["x"]) >= 3
    assert curve["series"][0]["x"] == sorted(curve["series"][0]["x"])


def test_extraction_label_only_with_a_tiny_budget_copies_less(general: AuditContext) -> None:
    full = ExtractionCheck().run(replace(general, query_budget=10_000))
    ctx = replace(general, query_budget=40, threat=ThreatModel(access=Access.LABELS))
    small = ExtractionCheck().run(ctx)
    _validate(ExtractionCheck(), small)
    assert small.metrics["fidelity"].value < full.metrics["fidelity"].value - 0.1
    assert small.status == "passed" and not small.findings
    assert small.tables[0]["rows"][0][1] == "copycat"


def test_extraction_under_the_served_output_policy(general: AuditContext) -> None:
    ctx = replace(general, query_budget=300, output_policy="label-only")
    result = ExtractionCheck().run(ctx)
    _validate(ExtractionCheck(), result)
    assert "fidelity_under_policy" in result.metrics
    labels = [s["label"] for s in result.plots[0]["series"]]
    assert any("label-only" in s for s in labels)


def test_extraction_without_held_out_data_is_not_run(general: AuditContext) -> None:
    req = ExtractionCheck().requires(replace(general, test=None))
    assert req is not None and "--test" in req.reason


# -- inversion --------------------------------------------------------------------------------
def test_inversion_shows_each_reconstruction_beside_its_class_mean(general: AuditContext) -> None:
    ctx = replace(general, settings={"inversion": {"steps": 60, "max_classes": 4}})
    result = InversionCheck().run(ctx)
    doc = _validate(InversionCheck(), result)
    (plot,) = doc["plots"]
    assert plot["kind"] == "images" and len(plot["images"]) == 4
    for row in plot["images"]:
        assert [c["label"].split(" ")[0] for c in row["cells"]] == ["reconstruction", "training"]
        assert len(row["cells"][0]["pixels"]) == 8 and len(row["cells"][0]["pixels"][0]) == 8
    close = result.metrics["closer_to_own_mean"]
    assert close.ci_method == "clopper-pearson" and close.n == 4
    ssim = result.metrics["mean_ssim"].value
    for f in result.findings:  # noise-like reconstructions are never rated high
        assert f.id == "inversion.miface"
        assert f.severity != Severity.HIGH or ssim >= 0.5


def test_inversion_needs_gradients_or_a_sensitive_column(general: AuditContext) -> None:
    scores_only = replace(general, model=black_box(general.model, access="scores"))
    req = InversionCheck().requires(scores_only)
    assert req is not None and "gradients" in req.reason
    flat = nn.Sequential(nn.Linear(6, 2))
    tab = AuditContext(
        model=TorchClassifier(flat, input_shape=(6,), num_classes=2), domain="tabular"
    )
    req = InversionCheck().requires(tab)
    assert req is not None and "sensitive column" in req.reason
    assert req.enable and "sensitive_column" in req.enable


def _leaky_table(leak: bool, n: int = 600) -> AuditContext:
    """Random rows and labels, column 0 a binary sensitive attribute independent of the label:
    a wide MLP memorises its 200 members (so its answers reveal their attribute), a linear
    model cannot."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 6, generator=g)
    x[:, 0] = (torch.rand(n, generator=g) < 0.5).float()
    y = (torch.rand(n, generator=g) < 0.5).long()
    torch.manual_seed(0)
    net = (nn.Sequential(nn.Linear(6, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, 2)) if leak else nn.Sequential(nn.Linear(6, 2)))
    net = train_classifier(net, x[:200], y[:200], epochs=300 if leak else 20, lr=3e-3, seed=0)
    clf = TorchClassifier(net, input_shape=(6,), num_classes=2, bounds=(0.0, 1.0))
    return AuditContext(seed=0, model=clf, train=Dataset(x[:200], y[:200], 2),
                        test=Dataset(x[200:], y[200:], 2), domain="tabular",
                        settings={"inversion": {"sensitive_column": "income_band",
                                                "features": ["income_band", "a", "b", "c",
                                                             "d", "e"]}})


def test_attribute_inference_finds_a_model_that_leaks_a_sensitive_column() -> None:
    leaky = InversionCheck().run(_leaky_table(leak=True))
    _validate(InversionCheck(), leaky)
    assert leaky.status == "failed"
    (finding,) = leaky.findings
    assert finding.id == "inversion.attribute-inference"
    assert finding.location == "feature:income_band"
    assert leaky.metrics["advantage"].value >= 0.2
    assert leaky.metrics["attribute_accuracy"].ci_method == "clopper-pearson"
    quiet = InversionCheck().run(_leaky_table(leak=False))
    assert quiet.status == "passed" and quiet.findings == []
    assert quiet.metrics["advantage"].value < leaky.metrics["advantage"].value


# -- poisoning --------------------------------------------------------------------------------
def test_poisoning_finds_a_planted_backdoor(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits[0][:1400], digits[1][:1400]
    poisoned = BadNets(target_class=0, rate=0.05, seed=0).poison(x, y)
    torch.manual_seed(0)
    net = train_classifier(
        small_cnn((1, 8, 8), 10, width=8), poisoned.x, poisoned.y, epochs=10, lr=3e-3, seed=0
    )
    ctx = _ctx(net, Dataset(poisoned.x, poisoned.y, 10), None)
    result = PoisoningCheck().run(ctx)
    doc = _validate(PoisoningCheck(), result)
    assert result.status == "failed"
    (finding,) = result.findings
    assert finding.id == "poisoning.suspected-backdoor" and finding.location == "class:0"
    flagged = torch.zeros(len(x), dtype=torch.bool)
    flagged[result.settings["flagged_indices"]] = True
    truth = poisoned.mask
    assert int((flagged & truth).sum()) >= 0.8 * int(truth.sum())
    kinds = [p["kind"] for p in doc["plots"]]
    assert kinds.count("histogram") == 2 and "images" in kinds
    frac = result.metrics["flagged_fraction"]
    assert frac.ci is not None and frac.ci[0] <= frac.value <= frac.ci[1]


def test_poisoning_is_quiet_on_a_clean_training_set(general: AuditContext) -> None:
    result = PoisoningCheck().run(general)
    _validate(PoisoningCheck(), result)
    assert result.status == "passed" and not result.findings
    assert result.metrics["flagged_fraction"].value == 0.0


def test_poisoning_without_a_training_set_is_not_run(general: AuditContext) -> None:
    req = PoisoningCheck().requires(replace(general, train=None))
    assert req is not None and "--train" in req.reason
