"""``bastion harden fix --audit``: harden against an audit's findings, rerun exactly the same
checks on the hardened model, and report fixed, new and unchanged findings and regressions.

The model is linear on digits (a state dict and the factory that builds it): its scores give
it away to equation solving (an extraction finding that a label-only policy removes), and
adversarial training raises its robust accuracy, so the diff has something to show both ways.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from bastion.audit.config import AuditConfig, AuditThreat
from bastion.audit.document import load_document
from bastion.audit.runner import run_audit
from bastion.cli.main import app
from bastion.data import load_digits
from bastion.defences.fix import harden_from_audit, plan_remedies
from bastion.models.zoo import train_classifier

SETTINGS = {
    "evasion": {"max_samples": 100, "attacks": ["apgd-ce"], "steps": 10, "curve_points": 0,
                "examples": 0},
    "extraction": {"budget": 140, "points": 2, "epochs": 20, "threshold": 0.95},
}


@pytest.fixture(scope="module")
def audit_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An audit of a state dict whose network a factory builds (the audit records it)."""
    d = tmp_path_factory.mktemp("fix")
    (d / "bastion_fix_test_nets.py").write_text(
        "from torch import nn\n\n\ndef build():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n")
    sys.path.insert(0, str(d))
    data = load_digits()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    x, y = data.x[perm], data.y[perm]
    torch.manual_seed(0)
    net = train_classifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), x[:1000], y[:1000],
                           epochs=10, lr=1e-2, seed=0)
    torch.save(net.state_dict(), d / "model.pt")
    np.savez(d / "train.npz", x=x[:1000].numpy(), y=y[:1000].numpy())
    np.savez(d / "test.npz", x=x[1400:1600].numpy(), y=y[1400:1600].numpy())
    config = AuditConfig(model=str(d / "model.pt"), train=d / "train.npz", test=d / "test.npz",
                         out=d / "audit", seed=3, threat=AuditThreat(eps=0.1),
                         only=("evasion", "extraction"), settings=SETTINGS,
                         model_options={"factory": "bastion_fix_test_nets:build"})
    run_audit(config, fresh=True, formats=("json",))
    yield d / "audit"
    sys.path.remove(str(d))


def _failed_ids(doc: dict[str, Any]) -> set[str]:
    return {f["id"] for c in doc["checks"] for f in c["findings"]}


def test_fix_reruns_exactly_the_audits_checks_and_the_diff_shows_the_change(
    audit_dir: Path, tmp_path: Path
) -> None:
    before = load_document(audit_dir / "report.json")
    assert {"evasion.low-robust-accuracy", "extraction.high-fidelity"} <= _failed_ids(before)
    result = harden_from_audit(audit_dir, out=tmp_path / "fixed", epochs=6, lr=1e-2)
    after = load_document(tmp_path / "fixed" / "after" / "report.json")  # valid, written
    # the same checks, selection, settings, seed, threat model and data
    assert [c["name"] for c in after["checks"]] == [c["name"] for c in before["checks"]]
    assert [c["status"] == "not_run" for c in after["checks"]] == [
        c["status"] == "not_run" for c in before["checks"]]
    assert after["config"] == before["config"] and after["config"]["settings"] == SETTINGS
    assert after["config"]["model_options"]["factory"] == "bastion_fix_test_nets:build"
    assert after["seed"] == before["seed"] == 3
    assert after["threat_model"] == before["threat_model"]
    assert {r: d["sha256"] for r, d in after["data"].items()} == {
        r: d["sha256"] for r, d in before["data"].items()}
    ev_b, ev_a = (next(c for c in doc["checks"] if c["name"] == "evasion")
                  for doc in (before, after))
    assert ev_a["settings"] == ev_b["settings"]
    assert after["model"]["digest"] != before["model"]["digest"]  # a hardened model
    assert after["model"]["served_output_policy"] == "label-only"

    # what was done, and what it changed
    assert {r.target for r in result.remedies} == {"evasion", "extraction"}
    assert "extraction.high-fidelity" in [f.id for f in result.diff.fixed]
    robust = next(m for m in result.diff.metrics if m.metric == "robust_accuracy")
    assert robust.after > robust.before
    fidelity = next(m for m in result.diff.metrics if m.metric == "fidelity")
    assert fidelity.change == "improvement"
    assert not result.regressed and after["baseline"]["summary"]["fixed"] >= 1

    out = tmp_path / "fixed"
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "bastion.harden-fix/1"
    assert report["diff"]["summary"]["fixed"] == len(result.diff.fixed)
    assert json.loads((out / "output-policy.json").read_text())["gateway"] == {
        "output": {"policy": "label-only"}}
    assert (out / "model.pt").is_file() and (out / "before" / "report.json").is_file()
    html = (out / "report.html").read_text()
    assert "Not addressed" in html and "extraction.high-fidelity" not in html.split(
        "Not addressed")[1].split("Findings before")[0]
    assert "fixed" in (out / "report.md").read_text()


def test_an_output_policy_that_breaks_accuracy_is_reported_as_regressed(
    audit_dir: Path, tmp_path: Path
) -> None:
    # rounding to 0 decimals zeroes every probability under 0.5: the linear model's unsure
    # answers all become class 0
    args = ["harden", "fix", "--audit", str(audit_dir), "--address", "extraction",
            "--output-policy", "rounding:0", "--out", str(tmp_path / "r"), "-q"]
    res = CliRunner().invoke(app, [*args, "--fail-on-regression"])
    assert res.exit_code == 1, res.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["regressed"] is True
    (acc,) = [r for r in report["regressions"] if r["kind"] == "accuracy"]
    assert acc["before"] - acc["after"] > 0.05 and "fell from" in acc["detail"]
    assert [r["target"] for r in report["remedies"]] == ["extraction"]
    assert {n["id"] for n in report["not_addressed"]} == {"evasion.low-robust-accuracy"}
    assert "Regressed (accuracy)" in (tmp_path / "r" / "report.html").read_text()
    # without the flag the same run reports it and exits 0
    assert CliRunner().invoke(app, args).exit_code == 0


def _broken(audit_dir: Path, tmp_path: Path, change: Any) -> Path:
    doc = json.loads((audit_dir / "report.json").read_text())
    change(doc)
    path = tmp_path / "audit-copy" / "report.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(("case", "message"), [
    ("missing", "not found"),
    ("not-json", "not a JSON document"),
    ("no-train", "no training data"),
    ("remote", "cannot be retrained"),
    ("other-model", "not the model the audit assessed"),
    ("both", "cannot be addressed in one run"),
])
def test_bad_input_is_one_clear_line_and_exit_2(
    audit_dir: Path, tmp_path: Path, case: str, message: str
) -> None:
    extra: list[str] = []
    if case == "missing":
        audit = tmp_path / "nowhere"
    elif case == "not-json":
        audit = tmp_path / "report.json"
        audit.write_text("{not json")
    elif case == "no-train":
        audit = _broken(audit_dir, tmp_path, lambda d: d["data"].pop("train"))
    elif case == "remote":
        audit = _broken(audit_dir, tmp_path, lambda d: d["model"].update(
            kind="remote", source="https://example.invalid/predict", digest=None))
    elif case == "other-model":
        audit = _broken(audit_dir, tmp_path,
                        lambda d: d["model"].update(digest="sha256:" + "0" * 64))
    else:
        audit, extra = audit_dir, ["--address", "evasion,membership"]
    res = CliRunner().invoke(app, ["harden", "fix", "--audit", str(audit), "--out",
                                   str(tmp_path / "o"), "-q", *extra])
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split()) and "Traceback" not in res.output
    assert not (tmp_path / "o" / "report.json").exists()


def test_the_remedy_follows_the_findings_and_says_why_it_leaves_others() -> None:
    def finding(fid: str, severity: str, **extra: Any) -> dict[str, Any]:
        return {"id": fid, "fingerprint": fid[:16].ljust(16, "0"), "severity": severity,
                "title": fid, **extra}

    doc = {"checks": [
        {"name": "evasion", "findings": [finding("evasion.low-robust-accuracy", "medium")]},
        {"name": "membership", "findings": [finding("membership.lira", "high")]},
        {"name": "extraction", "findings": [
            finding("extraction.high-fidelity", "high"),
            finding("extraction.transferable-adversarial-examples", "medium")]},
        {"name": "data", "findings": [
            finding("data.drift", "high"),
            finding("data.label-shift", "low",
                    suppressed={"owner": "ana", "expires": "2030-01-01"}),
            finding("data.train-test-overlap", "info")]},
    ]}
    wanted, left = plan_remedies(doc)
    # membership is the more severe: DP-SGD, and adversarial training is left with the reason
    assert set(wanted) == {"membership", "extraction"}
    reasons = {n.id: n.reason for n in left}
    assert "membership was addressed instead" in reasons["evasion.low-robust-accuracy"]
    assert "--address evasion" in reasons["extraction.transferable-adversarial-examples"]
    assert "data pipeline" in reasons["data.drift"]
    assert "accepted risk (owner ana" in reasons["data.label-shift"]
    assert reasons["data.train-test-overlap"].startswith("informational")
    wanted, left = plan_remedies(doc, address=["evasion"])
    assert set(wanted) == {"evasion"} and len(wanted["evasion"]) == 2
    assert "not asked for" in {n.id: n.reason for n in left}["membership.lira"]


def test_regressions_name_what_got_worse_with_the_numbers() -> None:
    from bastion.audit.baseline import diff_documents
    from bastion.defences.fix import _regressions

    def doc(auc: float, ci: list[float], findings: list[dict[str, Any]], status: str
            ) -> dict[str, Any]:
        return {"checks": [{"name": "membership", "status": status, "findings": findings,
                            "metrics": {"lira.auc": {"value": auc, "ci": ci,
                                                     "higher_is_better": False}}}]}

    leak = {"id": "membership.lira", "fingerprint": "b" * 16, "title": "leak", "severity": "high"}
    before = doc(0.52, [0.49, 0.55], [], "passed")
    after = doc(0.71, [0.67, 0.75], [leak], "failed")  # adversarial training made it leak
    found = _regressions(before, after, diff_documents(before, after),
                         {"before": 0.95, "after": 0.93}, 0.05)
    kinds = {r.kind: r for r in found}
    assert set(kinds) == {"metric", "new-finding", "status"}
    assert kinds["metric"].before == 0.52 and kinds["metric"].after == 0.71
    assert "0.52 [0.49, 0.55] to 0.71 [0.67, 0.75]" in kinds["metric"].detail
    # the same change inside both intervals is noise, and a small accuracy cost is tolerated
    calm = doc(0.53, [0.50, 0.56], [], "passed")
    assert _regressions(before, calm, diff_documents(before, calm),
                        {"before": 0.95, "after": 0.93}, 0.05) == []


def test_an_audit_without_a_recorded_config_reruns_from_its_results(
    audit_dir: Path, tmp_path: Path
) -> None:
    path = _broken(audit_dir, tmp_path, lambda d: d.pop("config"))
    # nothing recorded the factory either: it is given again
    result = harden_from_audit(path, out=tmp_path / "f", address=["extraction"],
                               factory="bastion_fix_test_nets:build")
    assert any("does not record its configuration" in w for w in result.warnings)
    before, after = (next(c for c in doc["checks"] if c["name"] == "evasion")
                     for doc in (result.before, result.after))
    assert after["settings"] == before["settings"]
    assert [c["status"] for c in result.after["checks"]][:2] == ["not_run", "not_run"]
    assert "extraction.high-fidelity" in [f.id for f in result.diff.fixed]


def test_membership_gets_dp_sgd_and_its_accuracy_cost_is_a_regression(
    audit_dir: Path, tmp_path: Path
) -> None:
    def leak(doc: dict[str, Any]) -> None:  # a membership finding, as a membership check writes
        f = copy.deepcopy(next(c for c in doc["checks"] if c["name"] == "evasion")["findings"][0])
        f.update(id="membership.loss-threshold", title="members leak", threat="privacy",
                 fingerprint="c" * 16, severity="high")
        entry = next(c for c in doc["checks"] if c["name"] == "membership")
        entry.update(status="failed", findings=[f])

    path = _broken(audit_dir, tmp_path, leak)
    result = harden_from_audit(path, out=tmp_path / "dp", epochs=1, target_epsilon=0.3,
                               dp_lr=0.05)
    # DP-SGD (its finding is more severe than evasion's, and the two exclude each other)
    assert {r.target: r.method for r in result.remedies} == {
        "membership": "dp-sgd", "extraction": "output policy"}
    assert result.training["privacy"]["epsilon"] <= 0.3 + 1e-6
    assert "membership was addressed instead" in {
        n.id: n.reason for n in result.not_addressed}["evasion.low-robust-accuracy"]
    # ε 0.3 in one epoch costs most of the accuracy: reported, with the numbers
    assert result.regressed
    acc = next(r for r in result.regressions if r.kind == "accuracy")
    assert acc.before - acc.after > 0.05
    clean = next(m for m in result.diff.metrics if m.metric == "clean_accuracy")
    assert clean.after < clean.before


def test_smoothing_fits_an_l2_threat_and_reports_its_certificate(
    audit_dir: Path, tmp_path: Path
) -> None:
    linf = harden_from_audit(audit_dir, out=tmp_path / "no", evasion_method="smooth",
                             address=["evasion"])
    assert "certifies L2 radii" in {n.id: n.reason for n in linf.not_addressed}[
        "evasion.low-robust-accuracy"] and not linf.remedies

    def l2(doc: dict[str, Any]) -> None:
        doc["threat_model"].update(norm="l2", eps=0.5)

    path = _broken(audit_dir, tmp_path, l2)
    result = harden_from_audit(path, out=tmp_path / "s", evasion_method="smooth", epochs=1,
                               address=["evasion"])
    (remedy,) = result.remedies
    assert remedy.method.startswith("randomized-smoothing") and remedy.settings["sigma"] == 0.5
    cert = result.training["certified"]
    assert cert["radius"] == 0.5 and 0.0 <= cert["certified_accuracy"] <= cert[
        "smoothed_accuracy"] <= 1.0
    assert result.after["threat_model"]["norm"] == "l2"
    assert "certified accuracy" in (tmp_path / "s" / "report.md").read_text()


def test_fast_adversarial_training_is_a_choice_and_the_report_names_it(
    audit_dir: Path, tmp_path: Path
) -> None:
    result = harden_from_audit(audit_dir, out=tmp_path / "fast", address=["evasion"],
                               evasion_method="fast", epochs=2, lr=1e-2)
    (remedy,) = result.remedies
    assert remedy.method.startswith("fast AT") and result.training["method"]["name"] == "fast"
    assert "fast AT" in (tmp_path / "fast" / "report.md").read_text()
