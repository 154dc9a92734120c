"""The registry, signing and encryption commands, invoked in-process."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner


@pytest.fixture
def app(cli: typer.Typer) -> typer.Typer:
    return cli


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("BASTION_REGISTRY_METADATA_URL", f"sqlite:///{tmp_path / 'reg.db'}")
    monkeypatch.setenv("BASTION_REGISTRY_STORAGE_URL", (tmp_path / "blobs").as_uri())
    monkeypatch.setenv("BASTION_ACTOR", "alice")
    monkeypatch.delenv("BASTION_TRUSTED_KEYS", raising=False)
    monkeypatch.delenv("BASTION_REGISTRY_ADMINS", raising=False)
    return {}


def _run(app: typer.Typer, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_sign_verify_and_tamper(app: typer.Typer, tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "w.bin").write_bytes(b"weights")
    code, out = _run(app, "keygen", str(tmp_path / "k.pem"), "--kind", "ecdsa-p256")
    assert code == 0 and "k.pem.pub" in out
    code, out = _run(app, "sign", str(model), "--key", str(tmp_path / "k.pem"))
    assert code == 0 and "model.sig" in out
    code, out = _run(app, "verify", str(model), "--key", str(tmp_path / "k.pem.pub"))
    assert code == 0 and out.startswith("verified")
    (model / "w.bin").write_bytes(b"weightz")
    (model / "extra.py").write_text("import os")
    code, out = _run(app, "verify", str(model), "--key", str(tmp_path / "k.pem.pub"))
    assert code == 1
    assert "changed: w.bin" in out and "extra: extra.py" in out
    code, out = _run(app, "keygen", str(tmp_path / "k.pem"))
    assert code == 2 and "already exists" in out


def test_encrypt_decrypt(app: typer.Typer, tmp_path: Path) -> None:
    src = tmp_path / "data.csv"
    src.write_bytes(b"x,y\n" * 1000)
    code, _ = _run(app, "keygen", str(tmp_path / "kek"), "--kind", "aes-256")
    assert code == 0
    code, _ = _run(app, "encrypt", str(src), str(tmp_path / "d.enc"), "--key-file",
                   str(tmp_path / "kek"), "--meta", "owner=ml", "--chunk-size", "512")
    assert code == 0
    code, out = _run(app, "decrypt", str(tmp_path / "d.enc"), str(tmp_path / "out.csv"),
                     "--key-file", str(tmp_path / "kek"))
    assert code == 0 and "-> " + str(tmp_path / "out.csv") in out.replace("\n", "")
    assert json.loads(out.split("metadata: ", 1)[1]) == {"owner": "ml"}
    assert (tmp_path / "out.csv").read_bytes() == src.read_bytes()
    _run(app, "keygen", str(tmp_path / "kek2"), "--kind", "aes-256")
    code, out = _run(app, "decrypt", str(tmp_path / "d.enc"), str(tmp_path / "o2"),
                     "--key-file", str(tmp_path / "kek2"))
    assert code == 2 and "wrong key-encryption key" in out
    assert not (tmp_path / "o2").exists()


def test_registry_workflow(app: typer.Typer, env: dict[str, str], tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    from bastion.artifacts.registry import core

    monkeypatch.setattr(core, "default_scanner", lambda p: ("clean", {}))
    _run(app, "keygen", str(tmp_path / "k.pem"))
    monkeypatch.setenv("BASTION_TRUSTED_KEYS", str(tmp_path / "k.pem.pub"))
    f = tmp_path / "m.onnx"
    f.write_bytes(b"v1")
    code, out = _run(app, "registry", "push", "fraud", str(f), "--sign-key",
                     str(tmp_path / "k.pem"), "--code-version", "abc123", "--metric", "acc=0.9",
                     "--param", "lr=0.01")
    assert code == 0, out
    assert "pushed fraud v1" in out and "signature=valid" in out and "scan=clean" in out
    f.write_bytes(b"v2")
    code, out = _run(app, "registry", "push", "fraud", str(f), "--json")
    assert code == 0 and json.loads(out)["version"] == 2
    code, out = _run(app, "registry", "show", "fraud", "1")
    shown = json.loads(out)
    assert shown["lineage"]["code_version"] == "abc123"
    assert shown["lineage"]["parameters"] == {"lr": 0.01}
    assert shown["lineage"]["metrics"] == {"acc": 0.9}

    report = tmp_path / "report.json"
    report.write_text(json.dumps({"model": {"digest": "sha256:" + hashlib.sha256(b"v1")
                                            .hexdigest()},
                                  "clean_accuracy": 0.9, "robust_accuracy": 0.4}))
    code, out = _run(app, "registry", "promote", "fraud", "1", "champion", "--report",
                     str(report), "--min", "robust_accuracy=0.5")
    assert code == 2 and "robust_accuracy = 0.4 is below 0.5" in out
    code, out = _run(app, "registry", "promote", "fraud", "2", "champion")
    assert code == 2 and "not signed" in out
    code, out = _run(app, "registry", "promote", "fraud", "1", "champion", "--report",
                     str(report), "--min", "robust_accuracy=0.3")
    assert code == 0 and "champion -> fraud v1" in out
    code, out = _run(app, "registry", "promote", "fraud", "2", "champion",
                     "--no-require-signature")
    assert code == 0
    code, out = _run(app, "registry", "rollback", "fraud", "champion")
    assert code == 0 and "champion -> fraud v1" in out
    code, out = _run(app, "registry", "pull", "fraud", "champion", str(tmp_path / "got.onnx"))
    assert code == 0 and (tmp_path / "got.onnx").read_bytes() == b"v1"
    code, out = _run(app, "registry", "list", "--json")
    assert [v["version"] for v in json.loads(out)] == [1, 2]

    monkeypatch.setenv("BASTION_ACTOR", "bob")
    code, out = _run(app, "registry", "pull", "fraud", "1", str(tmp_path / "b.onnx"))
    assert code == 2 and "needs 'use'" in out
    monkeypatch.setenv("BASTION_ACTOR", "alice")
    code, out = _run(app, "registry", "grant", "fraud", "bob", "use")
    assert code == 0
    monkeypatch.setenv("BASTION_ACTOR", "bob")
    code, out = _run(app, "registry", "pull", "fraud", "1", str(tmp_path / "b.onnx"))
    assert code == 0

    code, out = _run(app, "registry", "audit-log", "verify")
    assert code == 0 and "audit log verified" in out
    code, out = _run(app, "registry", "audit-log", "show", "--limit", "3")
    assert code == 0 and len(out.strip().splitlines()) == 3
    import sqlite3

    with sqlite3.connect(tmp_path / "reg.db") as db:
        db.execute("UPDATE bastion_audit_log SET outcome = 'ok' WHERE outcome = 'denied'")
    code, out = _run(app, "registry", "audit-log", "verify")
    assert code == 1 and "was edited" in out


def test_unknown_model_and_bad_url(app: typer.Typer, env: dict[str, str], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    code, out = _run(app, "registry", "show", "ghost")
    assert code == 2 and "no model named 'ghost'" in out
    monkeypatch.setenv("BASTION_REGISTRY_STORAGE_URL", "ftp://host/x")
    code, out = _run(app, "registry", "list")
    assert code == 2 and "scheme 'ftp' is not supported" in out
    monkeypatch.setenv("BASTION_REGISTRY_METADATA_URL", "mysql://db/x")
    code, out = _run(app, "registry", "list")
    assert code == 2 and "metadata URL 'mysql://db/x' is not supported" in out
    monkeypatch.setenv("BASTION_REGISTRY_STORAGE_URL", (tmp_path / "b2").as_uri())
    monkeypatch.setenv("BASTION_REGISTRY_METADATA_URL", "postgresql://u:pw@127.0.0.1:1/x")
    code, out = _run(app, "registry", "list")
    assert code == 2 and "cannot open the registry metadata database" in out
    assert "pw" not in out


def test_registry_encrypted_storage(app: typer.Typer, env: dict[str, str], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from bastion.artifacts.registry import core

    monkeypatch.setattr(core, "default_scanner", lambda p: ("clean", {}))
    _run(app, "keygen", str(tmp_path / "kek"), "--kind", "aes-256")
    f = tmp_path / "m.bin"
    f.write_bytes(b"secret-model")
    code, out = _run(app, "registry", "--kek-file", str(tmp_path / "kek"), "push", "s", str(f))
    assert code == 0, out
    blobs = [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
    assert blobs and all(b"secret-model" not in p.read_bytes() for p in blobs)
    code, out = _run(app, "registry", "pull", "s", "1", str(tmp_path / "a.bin"))
    assert code == 2 and "encrypted at rest" in out
    code, out = _run(app, "registry", "--kek-file", str(tmp_path / "kek"), "pull", "s", "1",
                     str(tmp_path / "b.bin"))
    assert code == 0 and (tmp_path / "b.bin").read_bytes() == b"secret-model"
