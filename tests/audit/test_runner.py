"""The audit runner: plan, not_run reasons, errors, resume, determinism, schema validity."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from bastion.audit.checks.data import DataCheck
from bastion.audit.checks.evasion import EvasionCheck
from bastion.audit.config import AuditConfig, AuditThreat
from bastion.audit.document import validate_document
from bastion.audit.runner import run_audit
from bastion.errors import InputError

FAST = {"evasion": {"max_samples": 48, "steps": 5, "max_queries": 30, "curve_points": 3}}


def _config(files: dict[str, Path], out: Path, **changes) -> AuditConfig:
    base = AuditConfig(model=str(files["model"]), train=files["train"], test=files["test"],
                       out=out, threat=AuditThreat(eps=0.1), settings=FAST)
    return base.with_overrides(**changes)


def _checks(doc) -> dict[str, dict]:
    return {c["name"]: c for c in doc["checks"]}


def _stable(doc) -> list[dict]:
    """The checks without their timings (the part two runs must agree on)."""
    return [{k: v for k, v in c.items() if k != "seconds"} for c in doc["checks"]]


def test_full_audit_writes_a_valid_report_with_every_check(audit_files, tmp_path) -> None:
    outcome = run_audit(_config(audit_files, tmp_path / "a"), formats=("json",))
    doc = outcome.document
    validate_document(doc)
    assert (tmp_path / "a" / "report.json").is_file()
    checks = _checks(doc)
    assert checks["artifact"]["status"] == "passed"
    assert checks["data"]["status"] in ("passed", "failed")
    ev = checks["evasion"]
    robust, clean = ev["metrics"]["robust_accuracy"], ev["metrics"]["clean_accuracy"]
    assert robust["value"] < clean["value"]
    lo, hi = robust["ci"]
    assert lo <= robust["value"] <= hi and robust["ci_method"] == "clopper-pearson"
    assert {p["kind"] for p in ev["plots"]} >= {"line", "bar", "images"}
    assert doc["model"]["digest"].startswith("sha256:")
    assert doc["model"]["capabilities"] == ["gradients", "scores", "labels"]
    assert doc["threat_model"]["eps"] == 0.1 and doc["threat_model"]["eps_source"] == "given"
    assert doc["data"]["train"]["n"] == 400
    # what passed is shown: the artifact row has passed cells, others n/a where irrelevant
    cells = {(c["threat"], c["practice"]): c["status"] for c in doc["scorecard"]["cells"]}
    assert cells[("unsafe_artifacts", "secure_data_access")] == "passed"
    assert cells[("evasion", "secure_data_access")] == "n/a"
    for f in ev["findings"]:
        assert f["id"].startswith("evasion.") and len(f["fingerprint"]) == 16


def test_domain_default_eps_for_images(audit_files, tmp_path) -> None:
    config = _config(audit_files, tmp_path, only=("artifact",))
    config = AuditConfig(**{**config.__dict__, "threat": AuditThreat()})
    doc = run_audit(config, write=False).document
    assert doc["threat_model"]["eps"] == pytest.approx(8 / 255)
    assert doc["threat_model"]["eps_source"].startswith("default for image data")


def test_missing_input_is_not_run_with_reason_and_remedy(audit_files, tmp_path) -> None:
    config = AuditConfig(model=str(audit_files["model"]), test=audit_files["test"],
                         out=tmp_path, settings=FAST, only=("artifact", "data"))
    doc = run_audit(config, write=False).document
    data = _checks(doc)["data"]
    assert data["status"] == "not_run"
    assert "needs --train" in data["reason"] and "--train" in data["enable"]
    evasion = _checks(doc)["evasion"]
    assert evasion["status"] == "not_run" and "not selected" in evasion["reason"]
    plan = {p["check"]: p for p in doc["plan"]}
    assert plan["data"]["will_run"] is False and plan["artifact"]["will_run"] is True
    assert doc["verdict"]["status"] == "incomplete"


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickle_payload_is_an_artifact_finding_and_nothing_is_loaded(audit_files, tmp_path
                                                                     ) -> None:
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "model.pkl"
    evil.write_bytes(pickle.dumps(_Payload(str(marker))))
    config = _config(audit_files, tmp_path / "out", model=str(evil))
    doc = run_audit(config, formats=("json",)).document
    assert not marker.exists()  # the payload never ran
    artifact = _checks(doc)["artifact"]
    assert artifact["status"] == "failed"
    ids = {f["id"] for f in artifact["findings"]}
    assert "artifact.unsafe-import" in ids
    assert any("mkdir" in f["location"] for f in artifact["findings"])
    assert doc["verdict"]["max_severity"] in ("high", "critical")
    evasion = _checks(doc)["evasion"]
    assert evasion["status"] == "not_run" and "nothing was loaded" in evasion["reason"]
    assert _checks(doc)["data"]["status"] != "not_run"  # data needs no model
    assert "capabilities" not in doc["model"]


def test_robust_enough_model_at_a_tiny_eps_passes_evasion(audit_files, tmp_path) -> None:
    config = _config(audit_files, tmp_path, eps=1e-4, only=("evasion",))
    ev = _checks(run_audit(config, write=False).document)["evasion"]
    assert ev["status"] == "passed", ev["findings"]
    assert ev["metrics"]["robust_accuracy"]["value"] >= ev["metrics"]["clean_accuracy"][
        "value"] - 0.03
    assert all(f["severity"] == "info" for f in ev["findings"])


def test_a_check_that_raises_is_an_error_and_the_rest_finish(audit_files, tmp_path, monkeypatch
                                                             ) -> None:
    def boom(self, ctx):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(DataCheck, "run", boom)
    doc = run_audit(_config(audit_files, tmp_path), formats=("json",)).document
    checks = _checks(doc)
    assert checks["data"]["status"] == "error"
    assert checks["data"]["reason"] == "RuntimeError: disk on fire"
    assert checks["artifact"]["status"] == "passed"
    assert checks["evasion"]["status"] in ("passed", "failed")
    assert not list((tmp_path / "checks").glob("data-*.json"))  # errors are never saved


def test_interrupted_audit_resumes_without_redoing_and_gives_the_same_report(
    audit_files, tmp_path, monkeypatch
) -> None:
    reference = run_audit(_config(audit_files, tmp_path / "ref"), formats=("json",)).document
    out = tmp_path / "run"
    real_run = EvasionCheck.run

    def interrupted(self, ctx):
        raise KeyboardInterrupt

    monkeypatch.setattr(EvasionCheck, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_audit(_config(audit_files, out), formats=("json",))
    assert not (out / "report.json").exists()
    saved = sorted(p.name.split("-")[0] for p in (out / "checks").glob("*.json"))
    assert saved == ["artifact", "data"]

    calls: list[str] = []
    real_data = DataCheck.run

    def counting(self, ctx):
        calls.append(self.name)
        return (real_data if self.name == "data" else real_run)(self, ctx)

    monkeypatch.setattr(EvasionCheck, "run", counting)
    monkeypatch.setattr(DataCheck, "run", counting)
    outcome = run_audit(_config(audit_files, out), formats=("json",))
    assert calls == ["evasion"]  # artifact and data were not redone
    assert set(outcome.reused) == {"artifact", "data"}
    assert _stable(outcome.document) == _stable(reference)

    calls.clear()
    run_audit(_config(audit_files, out), formats=("json",), fresh=True)
    assert calls == ["data", "evasion"]


def test_a_changed_input_is_not_reused(audit_files, tmp_path) -> None:
    out = tmp_path / "run"
    run_audit(_config(audit_files, out, only=("evasion",)), formats=("json",))
    second = run_audit(_config(audit_files, out, only=("evasion",), seed=1), formats=("json",))
    assert second.reused == ()
    assert len(list((out / "checks").glob("evasion-*.json"))) == 2


def test_same_seed_gives_the_same_report(audit_files, tmp_path) -> None:
    a = run_audit(_config(audit_files, tmp_path / "a"), write=False).document
    b = run_audit(_config(audit_files, tmp_path / "b"), write=False).document
    assert _stable(a) == _stable(b)
    assert a["scorecard"] == b["scorecard"] and a["verdict"] == b["verdict"]


def test_an_invalid_document_is_refused(audit_files, tmp_path) -> None:
    doc = run_audit(_config(audit_files, tmp_path, only=("artifact",)), write=False).document
    broken = {**doc, "checks": [{**doc["checks"][0], "status": "maybe"}]}
    with pytest.raises(InputError, match="checks/0/status"):
        validate_document(broken)
    bad_finding = {**doc["checks"][0], "findings": [{"id": "Not An Id"}]}
    with pytest.raises(InputError, match=r"not a valid bastion\.audit/1 document"):
        validate_document({**doc, "checks": [bad_finding]})


def test_time_budget_leaves_later_checks_not_run(audit_files, tmp_path, monkeypatch) -> None:
    import itertools

    from bastion.audit import workers

    # the budget starts at 0 and the first check starts at 0; every later check finds the
    # clock past the budget
    clock = itertools.chain([0.0, 0.0], itertools.repeat(100.0))
    monkeypatch.setattr(workers, "wall_clock", lambda: next(clock))
    config = _config(audit_files, tmp_path, time_budget_s=50.0)
    checks = _checks(run_audit(config, write=False).document)
    assert checks["artifact"]["status"] == "passed"
    assert checks["evasion"]["status"] == "not_run"
    assert "time budget" in checks["evasion"]["reason"]
