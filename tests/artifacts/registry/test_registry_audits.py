"""Registry gates that read signed audits: ``promote --audit``, audits kept with the version,
``audit-due`` (issue: audits that teams share)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bastion.artifacts.registry import GateConfig, Registry
from bastion.artifacts.signing import generate_keypair
from bastion.audit.attest import read_submission, sign_audit
from bastion.audit.checks import load_catalogue
from bastion.audit.document import catalogue_version
from bastion.audit.policy import AuditPolicy
from bastion.cli.main import app
from bastion.errors import RegistryError

from ...audit._docs import finding, make_doc
from .conftest import clean_scanner

WEIGHTS = b"the model's weights"
RECENT = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
CURRENT = catalogue_version(load_catalogue())


def _audit(tmp: Path, key: Path, *, name: str = "audit", model_bytes: bytes = WEIGHTS,
           created: str = RECENT, findings: list | None = None) -> Path:
    folder = tmp / name
    folder.mkdir()
    doc = make_doc(model_bytes=model_bytes, created=created,
                   evasion_findings=findings if findings is not None else [])
    doc["model"]["files"][0]["path"] = "model.pt"
    doc["catalogue_version"] = CURRENT
    (folder / "report.json").write_text(json.dumps(doc, indent=2))
    sign_audit(folder, key)
    return folder


@pytest.fixture
def setup(tmp_path: Path):
    priv, pub = generate_keypair("ed25519", tmp_path / "audit.key", tmp_path / "audit.pub")
    reg = Registry(f"sqlite:///{tmp_path / 'reg.db'}", (tmp_path / "blobs").as_uri(),
                   actor="alice", scanner=clean_scanner, trusted_keys=[pub],
                   gates=GateConfig(require_signature=False))
    model = tmp_path / "model.pt"
    model.write_bytes(WEIGHTS)
    reg.push("fraud", model)
    yield reg, priv, pub, tmp_path
    reg.close()


POLICY = AuditPolicy.from_mapping({"max_severity": "medium", "min": {"robust_accuracy": 0.4},
                                   "max_age": "30d"})


def test_a_good_signed_audit_promotes_and_is_kept_with_the_version(setup) -> None:
    reg, priv, _, tmp = setup
    folder = _audit(tmp, priv)
    v = reg.promote("fraud", 1, "champion", signed_audit=read_submission(folder),
                    audit_policy=POLICY)
    assert v.aliases == ("champion",)
    (kept,) = reg.get("fraud", 1).audits
    assert kept["audited_at"] == RECENT and kept["verdict"] == "failed"  # a medium finding
    entries = [e for e in reg.audit_log() if e.action == "attach_audit"]
    assert len(entries) == 1


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("foreign", "not signed by a trusted key"),
        ("other-model", "for another model"),
        ("stale", "stale"),
        ("failing", "above max_severity medium"),
        ("edited", "edited after it was signed"),
    ],
)
def test_promotion_is_refused_for_a_bad_audit_with_the_reason(setup, case: str,
                                                               reason: str) -> None:
    reg, priv, _, tmp = setup
    if case == "foreign":
        stranger, _ = generate_keypair("ed25519", tmp / "s.key", tmp / "s.pub")
        folder = _audit(tmp, stranger)
    elif case == "other-model":
        folder = _audit(tmp, priv, model_bytes=b"another model")
    elif case == "stale":
        folder = _audit(tmp, priv, created="2020-01-01T00:00:00Z")
    elif case == "failing":
        folder = _audit(tmp, priv, findings=[finding("evasion", "low-robust-accuracy", "high")])
    else:
        folder = _audit(tmp, priv)
        report = folder / "report.json"
        report.write_text(report.read_text().replace('"passed"', '"passed "', 1))
    with pytest.raises(RegistryError, match=reason):
        reg.promote("fraud", 1, "champion", signed_audit=read_submission(folder),
                    audit_policy=POLICY)
    assert reg.get("fraud", 1).aliases == () and reg.get("fraud", 1).audits == ()


def test_audit_due_lists_unaudited_stale_and_old_catalogue_versions(setup) -> None:
    reg, priv, _, tmp = setup
    (due,) = reg.audit_due(max_age="30d")
    assert due["version"] == 1 and "never audited" in due["reasons"][0]
    reg.promote("fraud", 1, "champion", signed_audit=read_submission(_audit(tmp, priv)),
                audit_policy=POLICY)
    current = CURRENT
    assert reg.audit_due(max_age="30d") == []  # this bastion's catalogue by default
    # a later catalogue with an updated check makes the audit out of date
    newer = CURRENT.replace("evasion@", "evasion@9")
    (due,) = reg.audit_due(max_age="30d", catalogue=newer)
    assert "older check catalogue" in due["reasons"][0] and due["aliases"] == ["champion"]
    # and time makes it stale
    (due,) = reg.audit_due(max_age=dt.timedelta(seconds=0), catalogue=current)
    assert "stale" in due["reasons"][0]


def test_cli_promote_with_audit_and_audit_due(setup) -> None:
    _, priv, pub, tmp = setup
    env = {"BASTION_REGISTRY_METADATA_URL": f"sqlite:///{tmp / 'reg.db'}",
           "BASTION_REGISTRY_STORAGE_URL": (tmp / "blobs").as_uri()}
    runner = CliRunner()
    base = ["registry", "--trusted-key", str(pub)]
    due = runner.invoke(app, [*base, "audit-due", "--json"], env=env)
    assert due.exit_code == 1 and json.loads(due.stdout)[0]["version"] == 1
    bad = _audit(tmp, priv, name="bad", findings=[finding("evasion", "low-robust-accuracy",
                                                          "high")])
    refused = runner.invoke(app, [*base, "promote", "fraud", "1", "champion", "--audit",
                                  str(bad), "--max-severity", "medium",
                                  "--no-require-signature"], env=env)
    assert refused.exit_code == 2, refused.output
    assert "above max_severity medium" in " ".join(refused.output.split())
    good = _audit(tmp, priv, name="good")
    ok = runner.invoke(app, [*base, "promote", "fraud", "1", "champion", "--audit", str(good),
                             "--max-severity", "medium", "--max-age", "30d",
                             "--no-require-signature"], env=env)
    assert ok.exit_code == 0, ok.output
    assert "gate used the signed audit" in ok.output
    shown = json.loads(runner.invoke(app, [*base, "show", "fraud", "1"], env=env).stdout)
    assert len(shown["audits"]) == 1
    assert runner.invoke(app, [*base, "audit-due", "--json"], env=env).exit_code == 0


def test_promote_with_a_signed_audit_through_the_registry_service(tmp_path: Path) -> None:
    from bastion.artifacts.signing import load_public_key

    from .test_registry_service import Service

    svc = Service(tmp_path)
    try:
        priv, pub = generate_keypair("ed25519", tmp_path / "a.key", tmp_path / "a.pub")
        svc.registry.trusted_keys = (load_public_key(pub),)
        model = tmp_path / "model.pt"
        model.write_bytes(WEIGHTS)
        maria, dan = svc.client("maria"), svc.client("dan")
        maria.push("fraud", model)
        good = read_submission(_audit(tmp_path, priv, name="good"))
        gate = GateConfig(require_signature=False)
        with pytest.raises(Exception, match="promote"):  # dan may push, not promote
            dan.promote("fraud", 1, "champion", gates=gate, signed_audit=good,
                        audit_policy=POLICY)
        stale = read_submission(_audit(tmp_path, priv, name="stale",
                                       created="2020-01-01T00:00:00Z"))
        with pytest.raises(RegistryError, match="stale"):
            maria.promote("fraud", 1, "champion", gates=gate, signed_audit=stale,
                          audit_policy=POLICY)
        v = maria.promote("fraud", 1, "champion", gates=gate, signed_audit=good,
                          audit_policy=POLICY)
        assert v.aliases == ("champion",) and len(v.audits) == 1
        assert maria.audit_due(max_age="30d") == []
    finally:
        svc.close()
