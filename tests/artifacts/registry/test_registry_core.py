"""Registry behaviour on every backend: versions, pulls, crash safety, concurrency, gates."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bastion.artifacts.registry import GateConfig, Lineage, ModelVersion, Registry
from bastion.artifacts.signing import generate_keypair, manifest_of, root_digest, sign
from bastion.errors import ArtifactError, RegistryError, SignatureError

Make = Callable[..., Registry]
DIGEST = "ab" * 32


def test_push_get_list_pull_round_trip(make_registry: Make, model_dir: Path, tmp_path: Path,
                                       keys: tuple[Path, Path]) -> None:
    reg = make_registry(trusted_keys=[keys[1]])
    lineage = Lineage(training_data_digest=DIGEST, code_version="git:1a2b3c",
                      parameters={"lr": 0.01, "epochs": 3}, metrics={"accuracy": 0.97})
    v1 = reg.push("digits", model_dir, signer_key=keys[0], lineage=lineage)
    assert v1.version == 1 and v1.kind == "dir"
    assert v1.digest == root_digest(manifest_of(model_dir))
    assert v1.signature_status == "valid" and v1.scan_verdict == "clean"
    (model_dir / "config.json").write_text('{"hidden": 128}')
    v2 = reg.push("digits", model_dir)
    assert v2.version == 2 and v2.digest != v1.digest and v2.signature_status == "none"
    got = reg.get("digits", 1)
    assert got.lineage == lineage and got.files == v1.files and got.created_by == "alice"
    assert reg.get("digits", "latest").version == 2
    assert [v.version for v in reg.list("digits")] == [1, 2]
    out = reg.pull("digits", "v1", tmp_path / "pulled")
    assert manifest_of(out) == v1.manifest
    assert json.loads((out / "config.json").read_text()) == {"hidden": 64}
    # a single file model, pulled into an existing folder keeps its name
    f = tmp_path / "clf.onnx"
    f.write_bytes(b"onnx-bytes")
    reg.push("clf", f)
    (tmp_path / "dl").mkdir()
    assert reg.pull("clf", "latest", tmp_path / "dl").read_bytes() == b"onnx-bytes"
    with pytest.raises(RegistryError, match="no version or alias 'v9'"):
        reg.get("digits", "v9")
    with pytest.raises(RegistryError, match="no model named"):
        reg.get("nope")
    assert reg.verify_audit_log().ok


def test_pull_detects_a_corrupted_blob(make_registry: Make, tmp_path: Path) -> None:
    reg = make_registry()
    f = tmp_path / "m.bin"
    f.write_bytes(b"A" * 100)
    v = reg.push("m", f)
    key = f"blobs/sha256/{v.manifest['.'][:2]}/{v.manifest['.']}"
    # overwrite the stored blob in place, on whichever backend this is
    storage = reg.storage
    evil = tmp_path / "evil.bin"
    evil.write_bytes(b"B" * 100)
    staged, _, _ = storage.stage(evil)
    if hasattr(storage, "root"):
        os.replace(storage.root / staged, storage.root / key)  # type: ignore[union-attr]
    else:
        client = storage._client  # type: ignore[union-attr]
        client.copy({"Bucket": storage.bucket, "Key": storage._key(staged)},  # type: ignore[union-attr]
                    storage.bucket, storage._key(key))  # type: ignore[union-attr]
    with pytest.raises(ArtifactError, match="does not match its digest"):
        reg.pull("m", 1, tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()


def test_exception_inside_the_commit_rolls_back(make_registry: Make, model_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from bastion.artifacts.registry import core

    reg = make_registry()
    reg.push("m", model_dir)
    real = core.audit.append

    def failing(session, **kw):  # type: ignore[no-untyped-def]
        if kw.get("action") == "push":
            raise RuntimeError("disk on fire")
        return real(session, **kw)

    monkeypatch.setattr(core.audit, "append", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        reg.push("m", model_dir)
    monkeypatch.setattr(core.audit, "append", real)
    assert [v.version for v in reg.list("m")] == [1]
    assert reg.push("m", model_dir).version == 2


def test_concurrent_pushes_get_distinct_consecutive_versions(
    make_registry: Make, tmp_path: Path
) -> None:
    n_threads, per_thread = 4, 2
    regs = [make_registry() for _ in range(n_threads)]
    results: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        try:
            for j in range(per_thread):
                f = tmp_path / f"m-{i}-{j}.bin"
                f.write_bytes(f"model {i} {j}".encode())
                v = regs[i].push("shared", f)
                with lock:
                    results.append(v.version)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    total = n_threads * per_thread
    assert sorted(results) == list(range(1, total + 1))
    listed = regs[0].list("shared")
    assert [v.version for v in listed] == list(range(1, total + 1))
    assert len({v.digest for v in listed}) == total
    assert regs[0].verify_audit_log().ok


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


REPORT_GOOD = {"clean_accuracy": 0.95, "robust_accuracy": 0.62,
               "attacks": {"pgd": {"robust_accuracy": 0.62}, "fgsm": {"robust_accuracy": 0.7}}}
REPORT_BAD = {"clean_accuracy": 0.96, "robust_accuracy": 0.31,
              "attacks": {"pgd": {"robust_accuracy": 0.31}}}


def _about(version: ModelVersion, report: dict[str, Any]) -> dict[str, Any]:
    """``report`` naming ``version``'s digest, as an audit document's ``model.digest``."""
    return {**report, "model": {"digest": f"sha256:{version.digest}"}}


def test_promotion_gates_name_the_failed_gate(make_registry: Make, tmp_path: Path,
                                              keys: tuple[Path, Path]) -> None:
    gates = GateConfig(minimums={"robust_accuracy": 0.5, "attacks.pgd.robust_accuracy": 0.5})
    reg = make_registry(trusted_keys=[keys[1]], gates=gates)
    good = reg.push("m", _file(tmp_path, "a.bin", b"a"), signer_key=keys[0])
    unsigned = reg.push("m", _file(tmp_path, "b.bin", b"b"))
    unsafe = reg.push("m", _file(tmp_path, "c.evil", b"c"), signer_key=keys[0])
    weak = reg.push("m", _file(tmp_path, "d.bin", b"d"), signer_key=keys[0])
    assert unsafe.scan_verdict == "unsafe"

    with pytest.raises(RegistryError, match="assessment: no report"):
        reg.promote("m", good.version, "champion")
    with pytest.raises(RegistryError, match=r"signature: the version is not signed"):
        reg.promote("m", unsigned.version, "champion", report=_about(unsigned, REPORT_GOOD))
    with pytest.raises(RegistryError, match=r"scan: the verdict is 'unsafe'"):
        reg.promote("m", unsafe.version, "champion", report=_about(unsafe, REPORT_GOOD))
    with pytest.raises(RegistryError, match=r"robust_accuracy = 0\.31 is below 0\.5"):
        reg.promote("m", weak.version, "champion", report=_about(weak, REPORT_BAD))
    report = tmp_path / "report.json"
    report.write_text(json.dumps(_about(good, REPORT_GOOD)))
    promoted = reg.promote("m", good.version, "champion", report=report)
    assert promoted.aliases == ("champion",)
    assert reg.get("m", "champion").version == good.version
    refused = [e for e in reg.audit_log() if e.outcome == "refused"]
    assert len(refused) == 4 and all(e.action == "promote" for e in refused)
    # a gate with another trusted key refuses a signature made by the registry's key
    _, other = generate_keypair("ecdsa-p256", tmp_path / "o.pem", tmp_path / "o.pub")
    result = reg.check_gates("m", good.version, gates=GateConfig(trusted_keys=(other,)))
    assert not result.passed and "another key" in result.reasons[0]
    # dropping the thresholds lets the weak-but-signed version through
    assert reg.check_gates("m", weak.version, gates=GateConfig()).passed


def test_rollback(make_registry: Make, tmp_path: Path) -> None:
    reg = make_registry(gates=GateConfig(require_clean_scan=True, require_signature=False))
    for i in range(3):
        reg.push("m", _file(tmp_path, f"{i}.bin", bytes([i])))
    reg.promote("m", 1, "champion")
    reg.promote("m", 2, "champion")
    reg.promote("m", 3, "champion")
    reg.promote("m", 3, "staging")
    assert reg.rollback("m", "champion").version == 2
    assert reg.get("m", "champion").version == 2
    assert reg.rollback("m", "champion").version == 1
    with pytest.raises(RegistryError, match="no earlier version"):
        reg.rollback("m", "champion")
    assert reg.get("m", "staging").version == 3
    assert reg.get("m", 1).aliases == ("champion",)


def test_signature_checked_at_push(make_registry: Make, model_dir: Path, tmp_path: Path,
                                   keys: tuple[Path, Path]) -> None:
    reg = make_registry(trusted_keys=[keys[1]])
    # a folder carrying its own model.sig made by a trusted key is accepted as valid
    (model_dir / ".gitignore").write_text("*.tmp")  # left out of signatures and of pushes
    sign(model_dir, keys[0])
    v = reg.push("m", model_dir)
    assert v.signature_status == "valid"
    assert "model.sig" not in v.files and ".gitignore" not in v.files
    assert set(v.files) == {"weights.bin", "config.json", "sub/labels.txt"}
    # a signature by an untrusted key, or over other bytes, is refused
    rogue_priv, _ = generate_keypair("ed25519", tmp_path / "r.pem", tmp_path / "r.pub")
    sign(model_dir, rogue_priv)
    with pytest.raises(SignatureError, match="refused"):
        reg.push("m", model_dir)
    sign(model_dir, keys[0])
    (model_dir / "config.json").write_text("{}")
    with pytest.raises(SignatureError, match=r"changed: config\.json"):
        reg.push("m", model_dir)
    (model_dir / "link").symlink_to(model_dir / "weights.bin")
    with pytest.raises(ArtifactError, match="symbolic link"):
        reg.push("m", model_dir)
    assert [x.version for x in reg.list("m")] == [1]


def test_real_scanner_blocks_a_malicious_pickle(tmp_path: Path) -> None:
    scan = pytest.importorskip("bastion.artifacts.scan")
    if not hasattr(scan, "scan_path"):
        pytest.skip("bastion.artifacts.scan.scan_path has not landed yet")
    import pickle

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, ("echo pwned",))

    bad = tmp_path / "model.pkl"
    bad.write_bytes(pickle.dumps(Evil()))
    reg = Registry(f"sqlite:///{tmp_path / 'r.db'}", (tmp_path / "b").as_uri(), actor="alice")
    try:
        v = reg.push("m", bad)
        assert v.scan_verdict == "unsafe"
        with pytest.raises(RegistryError, match="scan"):
            reg.promote("m", 1, "champion", gates=GateConfig(require_signature=False))
    finally:
        reg.close()


def test_encryption_at_rest(make_registry: Make, tmp_path: Path) -> None:
    from bastion.errors import ConfigurationError, DecryptionError

    kek = os.urandom(32)
    reg = make_registry(kek=kek)
    secret = b"TOP-SECRET-WEIGHTS" * 50
    v = reg.push("enc", _file(tmp_path, "w.bin", secret))
    keys = reg.storage.list("eblobs")
    # the address is keyed: listing the store does not reveal the plaintext's SHA-256
    assert keys == [v.files["."]["blob"]] and keys[0].startswith("eblobs/hmac-sha256/")
    assert not any(v.manifest["."] in k for k in reg.storage.list(""))
    assert reg.storage.list("blobs") == []
    buf = tmp_path / "raw.enc"
    with open(buf, "wb") as fh:
        reg.storage.download(keys[0], fh)
    assert b"TOP-SECRET" not in buf.read_bytes()
    assert reg.pull("enc", 1, tmp_path / "out.bin").read_bytes() == secret
    with pytest.raises(ConfigurationError, match="encrypted at rest"):
        make_registry().pull("enc", 1, tmp_path / "o2.bin")
    with pytest.raises(DecryptionError, match="wrong key-encryption key"):
        make_registry(kek=os.urandom(32)).pull("enc", 1, tmp_path / "o3.bin")
    assert not (tmp_path / "o2.bin").exists() and not (tmp_path / "o3.bin").exists()
