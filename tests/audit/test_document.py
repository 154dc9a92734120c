"""The document's scorecard and verdict, the data check's findings, gates reading a document."""

from __future__ import annotations

import numpy as np

from bastion.artifacts.registry.gates import lookup_metric
from bastion.audit.checks import load_catalogue
from bastion.audit.config import AuditConfig
from bastion.audit.document import scorecard, verdict
from bastion.audit.runner import run_audit


def _entry(name, threat, practices, status, findings=()):
    return {"name": name, "threat": threat, "practices": list(practices), "status": status,
            "findings": list(findings)}


def test_scorecard_cells_combine_statuses_and_mark_what_does_not_apply() -> None:
    catalogue = load_catalogue()
    checks = [
        _entry("artifact", "unsafe_artifacts", catalogue["artifact"].practices, "passed"),
        _entry("evasion", "evasion", catalogue["evasion"].practices, "failed"),
        _entry("data", "data_quality", catalogue["data"].practices, "not_run"),
    ]
    card = scorecard(checks, catalogue)
    cells = {(c["threat"], c["practice"]): c["status"] for c in card["cells"]}
    rows = {r["threat"]: r["status"] for r in card["threats"]}
    assert rows["unsafe_artifacts"] == "passed" and rows["evasion"] == "failed"
    assert cells[("unsafe_artifacts", "secure_data_access")] == "passed"
    assert cells[("evasion", "model_validation")] == "failed"
    assert cells[("evasion", "secure_data_access")] == "n/a"
    assert cells[("data_poisoning", "data_validation")] in ("not_run", "partial")
    assert set(card["practices"]) <= {p for cls in catalogue.values() for p in cls.practices}
    mixed = scorecard([*checks[:2], _entry("data", "data_quality", ("data_validation",),
                                           "passed")], {"data": catalogue["data"]})
    assert {r["threat"]: r["status"] for r in mixed["threats"]}["data_poisoning"] == "passed"


def test_verdict_counts_findings_and_statuses() -> None:
    high = {"severity": "high"}
    low = {"severity": "low"}
    suppressed = {"severity": "critical", "suppressed": {"reason": "accepted"}}
    v = verdict([_entry("a", "evasion", (), "failed", [high, low, suppressed]),
                 _entry("b", "evasion", (), "not_run")])
    assert v["status"] == "failed" and v["max_severity"] == "high"
    assert v["counts"]["high"] == 1 and v["counts"]["critical"] == 0
    assert v["counts"]["not_run"] == 1
    assert verdict([_entry("b", "evasion", (), "not_run")])["status"] == "incomplete"
    assert verdict([_entry("b", "evasion", (), "passed")]) == {
        "status": "passed", "max_severity": "none",
        "counts": {**{s: 0 for s in ("info", "low", "medium", "high", "critical")},
                   "passed": 1, "failed": 0, "not_run": 0, "error": 0}}


def test_data_check_finds_drift_violations_and_overlap(audit_files, tmp_path) -> None:
    with np.load(audit_files["train"]) as tr, np.load(audit_files["test"]) as te:
        x_train, y_train, x_test, y_test = tr["x"], tr["y"], te["x"], te["y"]
    shifted = np.clip(x_test * 0.4 + 0.6, 0, 1)  # brighter images: drift
    shifted[:3] = 2.0  # outside the training range: contract violations
    shifted[3:8] = x_train[:5]  # copies of training images: overlap
    np.savez(tmp_path / "shifted.npz", x=shifted, y=np.concatenate([y_test[:3], y_train[:5],
                                                                     y_test[8:]]))
    config = AuditConfig(model=str(audit_files["model"]), train=audit_files["train"],
                         test=tmp_path / "shifted.npz", out=tmp_path, only=("data",),
                         model_options={"bounds": [0, 2]})
    data = next(c for c in run_audit(config, write=False).document["checks"]
                if c["name"] == "data")
    assert data["status"] == "failed"
    ids = {f["id"] for f in data["findings"]}
    assert {"data.drift", "data.contract-violation", "data.train-test-overlap"} <= ids
    assert data["metrics"]["train_test_overlap"]["value"] >= 5 / 120
    assert data["metrics"]["valid_rows"]["value"] <= 117 / 120
    assert any(p["kind"] == "histogram" for p in data["plots"])


def test_data_check_passes_a_clean_split(audit_files, tmp_path) -> None:
    config = AuditConfig(model=str(audit_files["model"]), train=audit_files["train"],
                         test=audit_files["test"], out=tmp_path, only=("data",))
    data = next(c for c in run_audit(config, write=False).document["checks"]
                if c["name"] == "data")
    assert data["status"] == "passed", data["findings"]
    assert data["metrics"]["drifted_features"]["value"] == 0


def test_registry_gates_read_metrics_from_an_audit_document() -> None:
    doc = {"schema": "bastion.audit/1", "checks": [
        {"name": "evasion", "metrics": {"robust_accuracy": {"value": 0.4},
                                        "robust_accuracy.pgd": {"value": 0.5}}},
        {"name": "membership", "metrics": {"auc": {"value": 0.7}}}]}
    assert lookup_metric(doc, "robust_accuracy") == 0.4
    assert lookup_metric(doc, "evasion.robust_accuracy") == 0.4
    assert lookup_metric(doc, "attacks.pgd.robust_accuracy") == 0.5
    assert lookup_metric(doc, "membership.auc") == 0.7
    assert lookup_metric(doc, "extraction.fidelity") is None
