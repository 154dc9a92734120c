"""Per-model permissions and the hash-chained audit log, on every backend."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from bastion.artifacts.registry import GateConfig, Registry
from bastion.errors import AccessDenied, ConfigurationError

Make = Callable[..., Registry]


@pytest.fixture
def shared(make_registry: Make, tmp_path: Path) -> tuple[Registry, Registry, Path]:
    alice = make_registry("alice", gates=GateConfig(require_signature=False))
    bob = make_registry("bob", gates=GateConfig(require_signature=False))
    f = tmp_path / "m.bin"
    f.write_bytes(b"model")
    alice.push("fraud", f)
    return alice, bob, f


def test_permission_levels(shared: tuple[Registry, Registry, Path], tmp_path: Path) -> None:
    alice, bob, f = shared
    with pytest.raises(AccessDenied, match=r"'bob' needs 'read' permission on model 'fraud'"):
        bob.get("fraud")
    assert bob.list() == []  # models bob cannot read are not listed
    alice.grant("fraud", "bob", "read")
    assert bob.get("fraud").version == 1
    assert [v.name for v in bob.list()] == ["fraud"]
    with pytest.raises(AccessDenied, match="'use'"):
        bob.pull("fraud", 1, tmp_path / "x.bin")
    alice.grant("fraud", "bob", "use")
    assert bob.pull("fraud", 1, tmp_path / "x.bin").read_bytes() == b"model"
    with pytest.raises(AccessDenied, match="'edit'"):
        bob.push("fraud", f)
    alice.grant("fraud", "bob", "edit")
    assert bob.push("fraud", f).version == 2
    with pytest.raises(AccessDenied, match="'manage'"):
        bob.promote("fraud", 2, "champion")
    with pytest.raises(AccessDenied, match="'manage'"):
        bob.grant("fraud", "carol", "read")
    alice.revoke("fraud", "bob")
    with pytest.raises(AccessDenied):
        bob.get("fraud")
    assert alice.permissions("fraud") == {"alice": "manage"}


def test_global_grants_and_admins(shared: tuple[Registry, Registry, Path],
                                  make_registry: Make) -> None:
    alice, bob, _ = shared
    root = make_registry("root", admins=["root"], gates=GateConfig(require_signature=False))
    with pytest.raises(AccessDenied):
        alice.grant("*", "bob", "read")  # alice manages fraud, not everything
    root.grant("*", "bob", "use")
    assert bob.get("fraud").version == 1
    root.promote("fraud", 1, "champion")
    assert alice.get("fraud", "champion").version == 1
    with pytest.raises(ConfigurationError, match="permission must be one of"):
        root.grant("fraud", "bob", "admin")


def test_every_action_is_audited_including_denials(
    shared: tuple[Registry, Registry, Path], tmp_path: Path
) -> None:
    alice, bob, _ = shared
    with pytest.raises(AccessDenied):
        bob.pull("fraud", 1, tmp_path / "y.bin")
    alice.get("fraud", 1)
    entries = alice.audit_log()
    actions = [(e.actor, e.action, e.outcome) for e in entries]
    assert actions[0] == ("alice", "push", "ok")
    assert ("bob", "pull", "denied") in actions
    assert actions[-1] == ("alice", "show", "ok")
    denied = next(e for e in entries if e.outcome == "denied")
    assert "needs 'use'" in denied.details["reason"]
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    assert alice.verify_audit_log().ok


def _sql(reg: Registry, statement: str) -> None:
    with reg.engine.begin() as conn:
        conn.execute(text(statement))


@pytest.mark.parametrize("tamper", ["edit", "remove_middle", "remove_last", "reorder"])
def test_audit_log_tamper_is_detected(shared: tuple[Registry, Registry, Path],
                                      tamper: str) -> None:
    alice, _, f = shared
    alice.push("fraud", f)
    alice.grant("fraud", "bob", "read")
    alice.get("fraud")
    before = alice.verify_audit_log()
    assert before.ok and before.entries == 4
    table = "bastion_audit_log"
    if tamper == "edit":
        _sql(alice, f"UPDATE {table} SET actor = 'mallory' WHERE seq = 2")
        expect = (2, "edited")
    elif tamper == "remove_middle":
        _sql(alice, f"DELETE FROM {table} WHERE seq = 3")
        expect = (3, "missing")
    elif tamper == "remove_last":
        _sql(alice, f"DELETE FROM {table} WHERE seq = 4")
        expect = (4, "removed from the end")
    else:  # swap the content of entries 2 and 3, keeping their sequence numbers
        _sql(alice, f"UPDATE {table} SET seq = 100 WHERE seq = 2")
        _sql(alice, f"UPDATE {table} SET seq = 2 WHERE seq = 3")
        _sql(alice, f"UPDATE {table} SET seq = 3 WHERE seq = 100")
        expect = (2, "does not follow")
    result = alice.verify_audit_log()
    assert not result.ok
    assert result.first_bad_seq == expect[0]
    assert expect[1] in result.reason
