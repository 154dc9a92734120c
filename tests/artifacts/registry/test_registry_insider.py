"""The registry against an insider: gates that cannot be fed, a log that cannot be rewritten,
identities that cannot be claimed in direct mode, and leftovers that can be collected."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from bastion.artifacts.registry import GateConfig, Registry
from bastion.artifacts.registry.audit import load_checkpoint
from bastion.artifacts.registry.core import AUDIT_LOG_NAME
from bastion.artifacts.signing import generate_keypair
from bastion.errors import AccessDenied, ConfigurationError, RegistryError

from .conftest import clean_scanner

NO_SIG = GateConfig(require_signature=False)
GATE = GateConfig(require_signature=False, minimums={"robust_accuracy": 0.5},
                  maximums={"attack_success": 0.2})


def _reg(tmp: Path, actor: str = "alice", **kw: Any) -> Registry:
    kw.setdefault("scanner", clean_scanner)
    return Registry(f"sqlite:///{tmp / 'reg.db'}", (tmp / "blobs").as_uri(), actor=actor, **kw)


def _file(tmp: Path, name: str, data: bytes) -> Path:
    (tmp / name).write_bytes(data)
    return tmp / name


def _report(data: bytes, **metrics: float) -> dict[str, Any]:
    return {"model": {"digest": "sha256:" + hashlib.sha256(data).hexdigest(),
                      "files": [{"path": "m.bin", "sha256": hashlib.sha256(data).hexdigest()}]},
            **metrics}


def _sql(tmp: Path, statement: str, *args: Any) -> None:
    with sqlite3.connect(tmp / "reg.db") as db:
        db.execute(statement, args)


# ---------------------------------------------------------------------- gates


def test_reports_are_bound_to_the_version_and_nan_fails(tmp_path: Path) -> None:
    alice = _reg(tmp_path, gates=GATE)
    alice.push("fraud", _file(tmp_path, "a.bin", b"model-a"))
    alice.push("other", _file(tmp_path, "b.bin", b"model-b"))
    good_b = _report(b"model-b", robust_accuracy=0.9, attack_success=0.0)
    with pytest.raises(RegistryError, match="about another model"):
        alice.promote("fraud", 1, "champion", report=good_b)
    with pytest.raises(RegistryError, match="names no model digest"):
        alice.promote("fraud", 1, "champion", report={"robust_accuracy": 0.9})
    nan = {**_report(b"model-a"), "robust_accuracy": float("nan"), "attack_success": 0.0}
    with pytest.raises(RegistryError, match="robust_accuracy = nan is not a finite number"):
        alice.promote("fraud", 1, "champion", report=nan)
    inf = {**_report(b"model-a"), "robust_accuracy": 0.9, "attack_success": float("-inf")}
    with pytest.raises(RegistryError, match="attack_success = -inf is not a finite"):
        alice.promote("fraud", 1, "champion", report=inf)
    # an audit document binds by its files' digests too
    version, result = alice.promote_checked(
        "fraud", 1, "champion", report=_report(b"model-a", robust_accuracy=0.9,
                                                attack_success=0.1))
    assert version.aliases == ("champion",) and result.report is not None
    assert result.report["attached_by"] == "alice"
    alice.close()


def test_an_editor_cannot_plant_the_report_a_manager_promotes_with(tmp_path: Path) -> None:
    alice = _reg(tmp_path, gates=GATE)
    alice.push("fraud", _file(tmp_path, "a.bin", b"model-a"))
    alice.grant("fraud", "eddie", "edit")
    eddie = _reg(tmp_path, actor="eddie", gates=GATE)
    # eddie may attach (edit) but not promote, and his refused promotion attaches nothing
    with pytest.raises(AccessDenied, match="needs 'manage'"):
        eddie.promote("fraud", 1, "champion",
                      report=_report(b"model-a", robust_accuracy=1.0, attack_success=0.0))
    eddie.attach_report("fraud", 1, _report(b"model-a", robust_accuracy=1.0, attack_success=0.0))
    # the planted report is not what the manager's gate uses
    result = alice.check_gates("fraud", 1)
    assert not result.passed and result.report is None
    assert "attached by 'eddie', who does not manage the model" in result.reasons[0]
    with pytest.raises(RegistryError, match="no usable report"):
        alice.promote("fraud", 1, "champion")
    # the manager's own report is used, and named
    rid = alice.attach_report("fraud", 1, _report(b"model-a", robust_accuracy=0.7,
                                                   attack_success=0.1))
    result = alice.check_gates("fraud", 1)
    assert result.passed and result.report is not None and result.report["id"] == rid
    alice.promote("fraud", 1, "champion")
    entry = [e for e in alice.audit_log() if e.action == "promote"][-1]
    assert (entry.details["report"]["id"], entry.details["report"]["attached_by"]) == (rid, "alice")
    # editing the attached report's numbers in the database is caught
    _sql(tmp_path, "UPDATE bastion_assessments SET report = ? WHERE id = ?",
         json.dumps(_report(b"model-a", robust_accuracy=0.99, attack_success=0.0)), rid)
    assert "differs from what the audit log recorded" in alice.check_gates("fraud", 1).reasons[0]
    eddie.close()
    alice.close()


def test_an_edited_version_row_cannot_be_promoted(tmp_path: Path) -> None:
    def scanner(path: Path) -> tuple[str, dict[str, Any]]:
        return ("unsafe" if b"exec" in path.read_bytes() else "clean"), {}

    alice = _reg(tmp_path, scanner=scanner, gates=NO_SIG)
    alice.push("fraud", _file(tmp_path, "evil.pkl", b"exec(payload)"))
    with pytest.raises(RegistryError, match="scan: the verdict is 'unsafe'"):
        alice.promote("fraud", 1, "champion")
    _sql(tmp_path, "UPDATE bastion_versions SET scan_verdict = 'clean'")
    assert alice.verify_audit_log().ok  # the row is not part of the chain ...
    with pytest.raises(RegistryError, match="differ from what its push recorded"):
        alice.promote("fraud", 1, "champion")  # ... but the facts its push recorded are
    alice.close()


def test_push_scans_signs_and_stores_the_same_bytes(tmp_path: Path) -> None:
    """A benign pickle swapped for a malicious one during the push (here: as soon as the scan
    has looked) is never stored under the benign file's verdict and signature."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "a.pkl").write_bytes(b"benign")
    (model / "big.bin").write_bytes(os.urandom(1 << 16))
    seen: dict[str, bytes] = {}

    def racing_scanner(path: Path) -> tuple[str, dict[str, Any]]:
        seen.update({p.name: p.read_bytes() for p in path.iterdir()})
        (model / "a.pkl").write_bytes(b"exec(evil)")  # the attacker's swap
        (model / "big.bin").unlink()
        (model / "big.bin").symlink_to(tmp_path / "reg.db")  # and a link to a secret
        return "clean", {"path": str(path / "a.pkl")}

    priv, pub = generate_keypair("ed25519", tmp_path / "k.pem", tmp_path / "k.pub")
    reg = _reg(tmp_path, scanner=racing_scanner, trusted_keys=[pub])
    v = reg.push("m", model, signer_key=priv)
    out = reg.pull("m", 1, tmp_path / "back")
    assert (out / "a.pkl").read_bytes() == seen["a.pkl"] == b"benign"
    assert (out / "big.bin").read_bytes() == seen["big.bin"] and not (out / "big.bin").is_symlink()
    assert v.signature_status == "valid" and v.scan_details["path"] == str(model / "a.pkl")
    reg.close()


# ---------------------------------------------------------------------- anchored audit log


@pytest.fixture
def anchored(tmp_path: Path) -> tuple[Path, Path, Path]:
    priv, pub = generate_keypair("ed25519", tmp_path / "ck.pem", tmp_path / "ck.pub")
    return priv, pub, tmp_path / "outside" / "registry.checkpoint"


def _checkpoint(app: typer.Typer, priv: Path, cp: Path) -> tuple[int, str]:
    r = CliRunner().invoke(app, ["registry", "audit-log", "checkpoint", "--key", str(priv),
                                 "--out", str(cp)])
    return r.exit_code, r.output


@pytest.fixture
def app(cli: typer.Typer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> typer.Typer:
    """The registry CLI in direct mode on this test's database."""
    monkeypatch.setenv("BASTION_REGISTRY_METADATA_URL", f"sqlite:///{tmp_path / 'reg.db'}")
    monkeypatch.setenv("BASTION_REGISTRY_STORAGE_URL", (tmp_path / "blobs").as_uri())
    for var in ("BASTION_ACTOR", "BASTION_REGISTRY_URL", "BASTION_TRUSTED_KEYS",
                "BASTION_REGISTRY_CHECKPOINT", "BASTION_REGISTRY_CHECKPOINT_KEY"):
        monkeypatch.delenv(var, raising=False)
    return cli


@pytest.mark.parametrize("attack", ["truncate", "wipe", "recompute"])
def test_checkpoint_detects_truncation_wipe_and_recomputation(
        tmp_path: Path, anchored: tuple[Path, Path, Path], app: typer.Typer, attack: str) -> None:
    priv, pub, cp = anchored
    alice = _reg(tmp_path, checkpoint=cp, checkpoint_key=pub)
    for i in range(3):
        alice.push("fraud", _file(tmp_path, f"{i}.bin", bytes([i])))
    assert _checkpoint(app, priv, cp)[0] == 0
    signed = load_checkpoint(cp, pub, log=AUDIT_LOG_NAME)
    assert signed.seq == len(alice.audit_log())
    ok = alice.verify_audit_log()
    assert ok.ok and ok.checkpoint == signed
    if attack == "truncate":  # delete the tail and roll the head back consistently
        with sqlite3.connect(tmp_path / "reg.db") as db:
            (prev,) = db.execute("SELECT hash FROM bastion_audit_log WHERE seq = ?",
                                 (signed.seq - 2,)).fetchone()
            db.execute("DELETE FROM bastion_audit_log WHERE seq > ?", (signed.seq - 2,))
            db.execute("UPDATE bastion_audit_head SET seq = ?, hash = ?", (signed.seq - 2, prev))
        expect = "removed from the end or the log was wiped"
    elif attack == "wipe":
        _sql(tmp_path, "DELETE FROM bastion_audit_log")
        _sql(tmp_path, "UPDATE bastion_audit_head SET seq = 0, hash = ?", "0" * 64)
        expect = "removed from the end or the log was wiped"
    else:  # edit an entry and recompute every hash after it, and the head
        from bastion.artifacts.registry.audit import entry_hash

        with sqlite3.connect(tmp_path / "reg.db") as db:
            db.execute("UPDATE bastion_audit_log SET actor = 'mallory' WHERE seq = 1")
            prev = "0" * 64
            for row in db.execute("SELECT seq, at, actor, action, model, version, outcome,"
                                  " details FROM bastion_audit_log ORDER BY seq").fetchall():
                h = entry_hash(prev, *row)
                db.execute("UPDATE bastion_audit_log SET prev_hash = ?, hash = ? WHERE seq = ?",
                           (prev, h, row[0]))
                prev = h
            db.execute("UPDATE bastion_audit_head SET hash = ?", (prev,))
        expect = "differs from the signed checkpoint"
    plain = _reg(tmp_path)  # without the checkpoint the chain alone still "verifies"
    assert plain.verify_audit_log().ok
    result = alice.verify_audit_log()
    assert not result.ok and expect in result.reason
    with pytest.raises(RegistryError, match="audit log: it does not verify"):
        alice.promote("fraud", 1, "champion", gates=NO_SIG)
    # the CLI: verify exits 1, and no new checkpoint blesses the rewritten log
    r = CliRunner().invoke(app, ["registry", "--checkpoint", str(cp), "--checkpoint-key",
                                 str(pub), "audit-log", "verify"])
    assert r.exit_code == 1 and expect in r.output
    code, out = _checkpoint(app, priv, cp)
    assert code == 1 and "no checkpoint signed" in out
    assert load_checkpoint(cp, pub, log=AUDIT_LOG_NAME) == signed
    plain.close()
    alice.close()


def test_a_forged_checkpoint_is_refused(tmp_path: Path, anchored: tuple[Path, Path, Path],
                                        app: typer.Typer) -> None:
    priv, pub, cp = anchored
    _reg(tmp_path).push("m", _file(tmp_path, "m.bin", b"m"))
    assert _checkpoint(app, priv, cp)[0] == 0
    data = json.loads(cp.read_text())
    cp.write_text(json.dumps({**data, "seq": 1}))
    r = CliRunner().invoke(app, ["registry", "--checkpoint", str(cp), "--checkpoint-key",
                                 str(pub), "audit-log", "verify"])
    assert r.exit_code == 2 and "signature does not verify" in r.output


def test_the_access_log_is_anchored_the_same_way(tmp_path: Path,
                                                 anchored: tuple[Path, Path, Path]) -> None:
    from bastion.access.audit import AuditLog
    from bastion.cli.main import app as main_app

    priv, pub, _ = anchored
    db = f"sqlite:///{tmp_path / 'access.db'}"
    log = AuditLog(db)
    log.append_many([{"actor": "a", "action": "grant", "outcome": "ok"}] * 4)
    cp = tmp_path / "access.checkpoint"
    run = CliRunner().invoke
    r = run(main_app, ["audit-log", "checkpoint", "--out", str(cp), "--key", str(priv),
                       "--db", db])
    assert r.exit_code == 0, r.output
    with sqlite3.connect(tmp_path / "access.db") as conn:
        (prev,) = conn.execute("SELECT hash FROM bastion_access_audit_log WHERE seq = 2"
                               ).fetchone()
        conn.execute("DELETE FROM bastion_access_audit_log WHERE seq > 2")
        conn.execute("UPDATE bastion_access_audit_head SET seq = 2, hash = ?", (prev,))
    assert log.verify().ok
    r = run(main_app, ["audit-log", "verify", "--db", db, "--checkpoint", str(cp),
                       "--checkpoint-key", str(pub)])
    assert r.exit_code == 1 and "covers entry 4" in r.output
    log.close()


# ---------------------------------------------------------------------- direct-mode identity


def test_direct_mode_identity_cannot_be_claimed(tmp_path: Path, app: typer.Typer,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import getpass

    me = getpass.getuser()
    owner = _reg(tmp_path, actor="alice", gates=NO_SIG)
    owner.bootstrap_admin("alice")  # the database's administrator is alice, not me
    owner.push("fraud", _file(tmp_path, "a.bin", b"a"))
    owner.push("fraud", _file(tmp_path, "b.bin", b"b"))
    owner.promote("fraud", 1, "champion")
    owner.promote("fraud", 2, "champion")
    owner.grant("fraud", me, "edit")
    run = CliRunner().invoke
    r = run(app, ["registry", "rollback", "fraud", "champion"])
    assert r.exit_code == 2 and "needs 'manage'" in r.output
    for claim in (["registry", "--actor", "alice"], ["registry"]):
        env = {"BASTION_ACTOR": "alice"} if claim == ["registry"] else {}
        r = run(app, [*claim, "rollback", "fraud", "champion"], env=env)
        assert r.exit_code == 2 and "only a registry administrator" in r.output, r.output
    monkeypatch.setenv("BASTION_REGISTRY_ADMINS", me)  # no longer read
    r = run(app, ["registry", "rollback", "fraud", "champion"])
    assert r.exit_code == 2 and "needs 'manage'" in r.output
    assert owner.get("fraud", "champion").version == 2
    # an administrator by the database's record may act for others
    owner.grant("*", me, "manage")
    r = run(app, ["registry", "--actor", "alice", "rollback", "fraud", "champion"])
    assert r.exit_code == 0, r.output
    assert [e.actor for e in owner.audit_log() if e.action == "rollback"
            and e.outcome == "ok"] == ["alice"]
    owner.close()


def test_first_cli_user_of_a_new_database_administers_it(tmp_path: Path, app: typer.Typer) -> None:
    import getpass

    r = CliRunner().invoke(app, ["registry", "list"])
    assert r.exit_code == 0
    reg = _reg(tmp_path)
    assert reg.is_admin(getpass.getuser()) and not reg.is_admin("alice")
    reg.close()


# ---------------------------------------------------------------------- robustness


def test_strict_names_aliases_and_versions(tmp_path: Path) -> None:
    reg = _reg(tmp_path, gates=NO_SIG)
    with pytest.raises(ConfigurationError, match="model name 'fraud\\\\n' is invalid"):
        reg.push("fraud\n", _file(tmp_path, "a.bin", b"a"))
    reg.push("fraud", _file(tmp_path, "a.bin", b"a"))
    reg.push("fraud", _file(tmp_path, "b.bin", b"b"))
    with pytest.raises(ConfigurationError, match="alias 'champion\\\\n' is invalid"):
        reg.promote("fraud", 1, "champion\n")
    for bad in ("\u0662", "2\n", " 2", "-1", "0", "v2.0"):
        with pytest.raises(ConfigurationError, match="is invalid"):
            reg.get("fraud", bad)
    with pytest.raises(RegistryError, match="no version or alias 'vvv2'"):
        reg.get("fraud", "vvv2")
    assert reg.get("fraud", "v2").version == 2 == reg.get("fraud", 2).version
    with pytest.raises(RegistryError, match="'nobody-at-all' holds no permission"):
        reg.revoke("fraud", "nobody-at-all")
    reg.close()


def test_cli_bad_input_exits_2_with_a_message(tmp_path: Path, app: typer.Typer) -> None:
    run = CliRunner().invoke
    f = _file(tmp_path, "m.bin", b"m")
    lineage = _file(tmp_path, "lineage.json", b"{not json")
    cases = [
        (["push", "g", "/dev/null"], "is a character device"),
        (["push", "g", str(f), "--lineage", str(lineage)], "is not JSON"),
        (["push", "g", str(tmp_path / "[bold red]x" / "[/x]")], "[bold red]x/[/x]"),
    ]
    for args, expect in cases:
        r = run(app, ["registry", *args])
        assert r.exit_code == 2 and isinstance(r.exception, SystemExit), (args, r.output)
        assert expect in r.output, (args, r.output)
    assert run(app, ["registry", "push", "g", str(f)]).exit_code == 0
    for args, expect in [(["show", "g", "v1.5"], "is invalid"),
                         (["show", "g", "\u0661"], "is invalid"),
                         (["revoke", "g", "nobody-at-all"], "holds no permission"),
                         (["pull", "g", "1", str(f / "sub")], "is a file where a folder is")]:
        r = run(app, ["registry", *args])
        assert r.exit_code == 2 and expect in r.output, (args, r.output)
    os.mkfifo(tmp_path / "model.fifo")
    r = run(app, ["registry", "push", "g", str(tmp_path / "model.fifo")])
    assert r.exit_code == 2 and "FIFO" in r.output


def test_gc_removes_what_killed_pushes_left(urls: tuple[str, str], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # others' spools are safe
    bob = Registry(*urls, actor="bob")
    reg = Registry(*urls, actor="root", scanner=clean_scanner)
    reg.bootstrap_admin("root")
    reg.push("m", _file(tmp_path, "m.bin", b"kept"))
    staged = [reg.storage.stage(_file(tmp_path, f"s{i}", b"left" * i))[0] for i in range(1, 4)]
    spool = Path(tempfile.mkdtemp(prefix="bastion-push-"))
    (spool / "partial.bin").write_bytes(b"half")
    with pytest.raises(AccessDenied, match="needs 'manage' permission on model '\\*'"):
        bob.gc(older_than=0)
    assert reg.gc(older_than=3600) == []  # nothing is old enough
    assert set(staged) <= set(reg.gc(older_than=0, dry_run=True))
    assert set(staged) <= set(reg.storage.list("staging"))  # a dry run deletes nothing
    found = reg.gc(older_than=0)
    assert set(staged) <= set(found) and str(spool) in found
    assert reg.storage.list("staging") == [] and not spool.exists()
    assert reg.pull("m", 1, tmp_path / "back.bin").read_bytes() == b"kept"
    assert "gc" in [e.action for e in reg.audit_log()]
    bob.close()
    reg.close()
