"""The ``keys``, ``users`` and ``audit-log`` commands, invoked in-process with CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from sqlalchemy import update
from typer.testing import CliRunner

from bastion.access import AccessStore, AuditLog
from bastion.access.db import AccessAuditEntry
from bastion.cli import access as access_cli
from bastion.errors import AuthenticationError

runner = CliRunner()


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:  # a group, as in bastion's main app
        pass

    access_cli.register(app)
    return app


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'access.db'}"
    monkeypatch.setenv("BASTION_ACCESS_DB", url)
    monkeypatch.setenv("BASTION_ACTOR", "ops")
    return url


def _ok(app: typer.Typer, *args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_users_keys_and_audit_end_to_end(app: typer.Typer, db: str) -> None:
    _ok(app, "users", "add", "fraud-svc", "--service")
    _ok(app, "users", "grant", "fraud-svc", "consumer", "--resource", "model:fraud")
    listing = _ok(app, "users", "list")
    assert "fraud-svc" in listing and "consumer on model:fraud" in listing and "service" in listing

    out = _ok(app, "keys", "create", "fraud-svc", "--scope", "predict", "--resource",
              "model:fraud", "--expires-in", "30d", "--label", "prod")
    token = out.strip().splitlines()[-1]
    assert token.startswith("bst_")
    with AccessStore(db, cache_ttl=0) as store:
        who = store.authenticate(token)
        store.authorise(who, "predict", "model:fraud")
        [key] = store.list_keys()
        assert 29 <= (key.expires_at - key.created_at).days <= 30  # type: ignore[operator]
        assert key.created_by == "ops"

    listed = _ok(app, "keys", "list", "--owner", "fraud-svc")
    assert key.key_id in listed and "active" in listed and token.split("_", 2)[2] not in listed

    _ok(app, "keys", "revoke", key.key_id, "--actor", "alice")
    with AccessStore(db, cache_ttl=0) as store, pytest.raises(AuthenticationError):
        store.authenticate(token)
    assert "revoked" in _ok(app, "keys", "list")

    verified = _ok(app, "audit-log", "verify")
    assert "audit log verified" in verified
    lines = [json.loads(line) for line in _ok(app, "audit-log", "show", "--limit", "2")
             .splitlines()]
    assert [(e["actor"], e["action"], e["outcome"]) for e in lines] == [
        ("alice", "revoke_key", "ok"), ("fraud-svc", "authenticate", "fail")]
    assert lines[1]["details"]["reason"] == f"API key {key.key_id} was revoked"


def test_audit_log_verify_names_the_tampered_entry(app: typer.Typer, db: str) -> None:
    _ok(app, "users", "add", "a")
    _ok(app, "users", "grant", "a", "auditor")
    _ok(app, "users", "add", "b")
    log = AuditLog(db)
    with log.transaction() as s:
        s.execute(update(AccessAuditEntry).where(AccessAuditEntry.seq == 2)
                  .values(actor="mallory"))
    log.close()
    result = runner.invoke(app, ["audit-log", "verify"])
    assert result.exit_code == 1
    assert "entry 2" in result.output and "edited" in result.output


@pytest.mark.parametrize("args,message", [
    (["keys", "create", "nobody"], "unknown identity"),
    (["keys", "create", "a", "--expires-in", "soon"], "bad duration"),
    (["keys", "create", "a", "--scope", "manage_keys"], "cannot have scope"),
    (["keys", "revoke", "0123456789abcdef"], "unknown key id"),
    (["users", "grant", "a", "wizard"], "unknown role"),
    (["users", "grant", "a", "consumer", "--resource", "bucket:x"], "bad resource"),
    (["users", "add", "a"], "already exists"),
    (["users", "revoke", "a", "admin"], "has no grant"),
])
def test_bad_input_exits_2_with_a_message(app: typer.Typer, db: str, args: list[str],
                                          message: str) -> None:
    _ok(app, "users", "add", "a")
    _ok(app, "users", "grant", "a", "consumer")
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_missing_database_is_named(app: typer.Typer, tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    result = runner.invoke(app, ["audit-log", "verify", "--db", f"sqlite:///{missing}"])
    assert result.exit_code == 2 and "no access database" in result.output
    assert not missing.exists()
    result = runner.invoke(app, ["users", "list", "--db", "mysql://h/db"])
    assert result.exit_code == 2 and "not supported" in result.output


def test_users_remove_and_never_expiring_key(app: typer.Typer, db: str) -> None:
    _ok(app, "users", "add", "svc", "--service")
    _ok(app, "users", "grant", "svc", "consumer")
    out = _ok(app, "keys", "create", "svc", "--expires-in", "never")
    assert "expires: never" in out
    _ok(app, "users", "revoke", "svc", "consumer")
    _ok(app, "users", "remove", "svc")
    assert "svc" not in _ok(app, "users", "list")
    assert "revoked" in _ok(app, "keys", "list")


def test_audit_log_rotate_then_verify_across_segments(app: typer.Typer, db: str,
                                                      tmp_path: Path) -> None:
    log = AuditLog(db)
    log.append_many([{"actor": "gw", "action": "predict", "outcome": "allowed"}] * 12)
    log.close()
    archive = tmp_path / "segments"
    r = runner.invoke(app, ["audit-log", "rotate", "--archive", str(archive), "--keep", "2"])
    assert r.exit_code == 0, r.output
    assert "sealed entries 1..10" in r.output
    r = runner.invoke(app, ["audit-log", "verify", "--archive", str(archive)])
    assert r.exit_code == 0, r.output
    assert "13 entries" in r.output  # 12 + the seal entry
    seg = next(archive.iterdir())
    seg.write_text(seg.read_text().replace('"gw"', '"xx"', 1))
    r = runner.invoke(app, ["audit-log", "verify", "--archive", str(archive)])
    assert r.exit_code == 1 and "sealed segment" in r.output
