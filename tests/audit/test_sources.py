"""Model sources of an audit: the registry, a remote endpoint (black box), signatures."""

from __future__ import annotations

import pytest
import torch

from bastion.artifacts.registry import GateConfig, Registry
from bastion.artifacts.signing import generate_keypair, sign
from bastion.audit.config import AuditConfig, AuditThreat
from bastion.audit.runner import run_audit
from bastion.errors import ConfigurationError
from bastion.models import TorchClassifier
from bastion.models.remote import FakeEndpoint

SETTINGS = {"evasion": {"max_samples": 24, "steps": 3, "max_queries": 20, "curve_points": 2}}


def _checks(doc):
    return {c["name"]: c for c in doc["checks"]}


@pytest.fixture()
def keys(tmp_path):
    return generate_keypair("ed25519", tmp_path / "k.pem", tmp_path / "k.pub")


def test_registry_reference_by_version_and_alias(audit_files, tmp_path, keys, monkeypatch
                                                 ) -> None:
    private, public = keys
    meta, blobs = f"sqlite:///{tmp_path / 'reg.db'}", (tmp_path / "blobs").as_uri()
    with Registry(meta, blobs, actor="alice", trusted_keys=[public]) as reg:
        reg.push("digits", audit_files["model"], signer_key=private)
        reg.promote("digits", 1, "champion",
                    gates=GateConfig(require_clean_scan=True, require_signature=True))
    monkeypatch.setenv("BASTION_REGISTRY_METADATA_URL", meta)
    monkeypatch.setenv("BASTION_REGISTRY_STORAGE_URL", blobs)
    monkeypatch.setenv("BASTION_ACTOR", "alice")
    monkeypatch.setenv("BASTION_TRUSTED_KEYS", str(public))
    for ref in ("registry://digits@1", "registry://digits@champion"):
        config = AuditConfig(model=ref, test=audit_files["test"], out=tmp_path / "out",
                             settings=SETTINGS, only=("artifact", "evasion"))
        doc = run_audit(config, write=False).document
        assert doc["model"]["kind"] == "registry"
        assert doc["model"]["registry"]["name"] == "digits"
        assert doc["model"]["registry"]["version"] == 1
        assert doc["model"]["registry"]["signature_status"] == "valid"
        artifact = _checks(doc)["artifact"]
        assert artifact["status"] == "passed" and "valid (registry)" in artifact["summary"]
        assert _checks(doc)["evasion"]["status"] in ("passed", "failed")
    assert not list(tmp_path.glob(".bastion-pull-*"))  # the pulled copy is removed
    bad = AuditConfig(model="registry://digits@retired", test=audit_files["test"],
                      out=tmp_path / "out")
    with pytest.raises(Exception, match="retired"):
        run_audit(bad, write=False)


def test_signature_key_verifies_the_model_file(audit_files, tmp_path, keys) -> None:
    private, public = keys
    model = tmp_path / "model.pt"
    model.write_bytes(audit_files["model"].read_bytes())
    sign(model, private)
    config = AuditConfig(model=str(model), test=audit_files["test"], out=tmp_path / "o",
                         signature_key=public, only=("artifact",), settings=SETTINGS)
    artifact = _checks(run_audit(config, write=False).document)["artifact"]
    assert artifact["status"] == "passed" and "verified" in artifact["summary"]
    with model.open("ab") as fh:  # tamper: the file no longer matches its signature
        fh.write(b"\0")
    artifact = _checks(run_audit(config, write=False).document)["artifact"]
    assert artifact["status"] == "failed"
    assert [f["id"] for f in artifact["findings"]] == ["artifact.bad-signature"]


def test_remote_endpoint_is_audited_as_a_black_box(audit_files, digits_mlp, tmp_path,
                                                   monkeypatch) -> None:
    net, _, _ = digits_mlp
    local = TorchClassifier(net, input_shape=(1, 8, 8), num_classes=10)
    monkeypatch.setenv("MODEL_KEY", "s3cret")
    seen: list[str] = []

    class Recording(FakeEndpoint):
        def handle_request(self, request):
            seen.append(request.headers.get("authorization", ""))
            return super().handle_request(request)

    config = AuditConfig(model="https://models.test/v1/predict", test=audit_files["test"],
                         train=audit_files["train"], out=tmp_path, api_key_env="MODEL_KEY",
                         threat=AuditThreat(eps=0.1, query_budget=2000), settings=SETTINGS)
    doc = run_audit(config, transport=Recording(local), write=False).document
    assert doc["model"]["kind"] == "remote" and doc["model"]["digest"] is None
    assert doc["model"]["capabilities"] == ["scores", "labels"]
    assert doc["threat_model"]["access"] == "scores"  # white-box asked, scores available
    checks = _checks(doc)
    assert checks["artifact"]["status"] == "not_run"
    assert "no file to scan" in checks["artifact"]["reason"]
    ev = checks["evasion"]
    assert ev["status"] in ("passed", "failed") and ev["settings"]["attacks"] == ["square"]
    assert not any("gradient" in w for w in ev["settings"]["warnings"])
    assert seen and set(seen) == {"Bearer s3cret"}


def test_remote_endpoint_needs_its_key(audit_files, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    config = AuditConfig(model="https://models.test/predict", test=audit_files["test"],
                         out=tmp_path, api_key_env="NO_SUCH_KEY")
    with pytest.raises(ConfigurationError, match="NO_SUCH_KEY"):
        run_audit(config, write=False)


def test_in_process_classifier_is_audited_with_its_file(audit_files, digits_mlp, tmp_path
                                                        ) -> None:
    net, _, _ = digits_mlp
    clf = TorchClassifier(net, input_shape=(1, 8, 8), num_classes=10)
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    config = AuditConfig(model=str(tmp_path / "weights.pt"), test=audit_files["test"],
                         out=tmp_path, settings=SETTINGS, only=("artifact",))
    doc = run_audit(config, classifier=clf, write=False).document
    assert doc["model"]["kind"] == "file" and doc["model"]["adapter"] == "TorchClassifier"
    assert _checks(doc)["artifact"]["status"] == "passed"
