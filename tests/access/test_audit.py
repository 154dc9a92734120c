"""The access audit log: hash chain, tamper detection, concurrency, and the batching writer."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete, insert, select, update

from bastion.access import AccessStore, AuditLog, AuditWriter
from bastion.access.db import AccessAuditEntry, AccessAuditHead
from bastion.errors import BastionError, ConfigurationError


@pytest.fixture
def log(db_url: str) -> Iterator[AuditLog]:
    audit = AuditLog(db_url)
    for i in range(1, 6):
        audit.append(actor=f"user{i}", action="predict", resource=f"model:m{i}", outcome="allow",
                     details={"i": i})
    yield audit
    audit.close()


def _edit(log: AuditLog, which: int, **values: object) -> None:
    with log.transaction() as s:
        s.execute(update(AccessAuditEntry).where(AccessAuditEntry.seq == which).values(**values))


def _delete(log: AuditLog, seq: int) -> None:
    with log.transaction() as s:
        s.execute(delete(AccessAuditEntry).where(AccessAuditEntry.seq == seq))


def test_chain_verifies_and_lists(log: AuditLog) -> None:
    result = log.verify()
    assert (result.ok, result.entries, result.first_bad_seq) == (True, 5, None)
    assert log.head() == (5, result.head_hash)
    newest = log.entries(limit=2)
    assert [e.seq for e in newest] == [4, 5]
    assert newest[0].details == {"i": 4} and newest[0].resource == "model:m4"
    assert len(log.entries()) == 5


def test_edited_entry_is_detected(log: AuditLog) -> None:
    _edit(log, 3, outcome="deny")
    result = log.verify()
    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert "edited" in result.reason


def test_edited_details_are_detected(log: AuditLog) -> None:
    _edit(log, 2, details='{"i":99}')
    assert log.verify().first_bad_seq == 2


def test_removed_middle_entry_is_detected(log: AuditLog) -> None:
    _delete(log, 3)
    result = log.verify()
    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert "missing" in result.reason


def test_removed_middle_entry_with_renumbering_is_detected(log: AuditLog) -> None:
    _delete(log, 3)
    for seq in (4, 5):
        _edit(log, seq, seq=seq - 1)
    with log.transaction() as s:
        s.execute(update(AccessAuditHead).values(seq=4))
    result = log.verify()
    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert "does not follow" in result.reason


def test_removed_last_entry_is_detected(log: AuditLog) -> None:
    _delete(log, 5)
    result = log.verify()
    assert (result.ok, result.first_bad_seq) == (False, 5)
    assert "removed from the end" in result.reason


def test_inserted_entry_is_detected(log: AuditLog) -> None:
    with log.transaction() as s:
        for seq in (5, 4, 3):  # make room after entry 2
            s.execute(update(AccessAuditEntry).where(AccessAuditEntry.seq == seq)
                      .values(seq=seq + 1))
        prev = s.execute(select(AccessAuditEntry.hash)
                         .where(AccessAuditEntry.seq == 2)).scalar_one()
        s.execute(insert(AccessAuditEntry).values(
            seq=3, at="2026-01-01T00:00:00+00:00", actor="mallory", action="grant",
            resource="*", outcome="ok", details="{}", prev_hash=prev, hash="f" * 64))
        s.execute(update(AccessAuditHead).values(seq=6))
    result = log.verify()
    assert (result.ok, result.first_bad_seq) == (False, 3)


def test_reordered_entries_are_detected(log: AuditLog) -> None:
    with log.transaction() as s:
        s.execute(update(AccessAuditEntry).where(AccessAuditEntry.seq == 2).values(seq=-2))
        s.execute(update(AccessAuditEntry).where(AccessAuditEntry.seq == 3).values(seq=2))
        s.execute(update(AccessAuditEntry).where(AccessAuditEntry.seq == -2).values(seq=3))
    result = log.verify()
    assert (result.ok, result.first_bad_seq) == (False, 2)
    assert "does not follow" in result.reason


def test_append_many_is_one_chain_and_validates_first(log: AuditLog) -> None:
    log.append_many([{"actor": "a", "action": "x", "outcome": "ok"},
                     {"actor": "b", "action": "y", "outcome": "ok", "resource": "*"}])
    with pytest.raises(ConfigurationError, match="unknown audit field"):
        log.append_many([{"actor": "c", "action": "z", "outcome": "ok"},
                         {"actor": "d", "action": "z", "outcome": "ok", "colour": "red"}])
    with pytest.raises(ConfigurationError, match="'actor' must be a non-empty string"):
        log.append(actor="", action="z", outcome="ok")
    assert [e.actor for e in log.entries(limit=2)] == ["a", "b"]
    assert log.verify().entries == 7


def test_two_threads_appending_keep_the_chain_valid(db_url: str) -> None:
    # two separate AuditLog objects (two engines, like two processes) and two threads
    logs = [AuditLog(db_url), AuditLog(db_url)]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for n in range(40):
                logs[i].append(actor=f"t{i}", action="predict", outcome="allow",
                               details={"n": n})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    result = logs[0].verify()
    assert (result.ok, result.entries) == (True, 80)
    mine = [e.details["n"] for e in logs[0].entries() if e.actor == "t1"]
    assert mine == list(range(40))  # each writer's entries stay in its order
    for audit in logs:
        audit.close()


def test_writer_batches_and_close_flushes(db_url: str) -> None:
    audit = AuditLog(db_url)
    writer = AuditWriter(audit, max_batch=1000, interval=60.0)
    for n in range(300):
        writer.submit(actor="gw", action="predict", outcome="allow", details={"n": n})
    assert writer.pending == 300 and audit.entries() == []  # nothing written yet
    writer.close()
    entries = audit.entries()
    assert [e.details["n"] for e in entries] == list(range(300))
    assert audit.verify().ok
    with pytest.raises(BastionError, match="closed"):
        writer.submit(actor="gw", action="predict", outcome="allow")
    writer.close()  # idempotent
    audit.close()


def test_writer_flushes_full_batches_in_the_background(db_url: str) -> None:
    audit = AuditLog(db_url)
    with AuditWriter(audit, max_batch=50, interval=60.0) as writer:
        for n in range(120):
            writer.submit(actor="gw", action="predict", outcome="allow", details={"n": n})
        for _ in range(200):  # the thread wakes on a full batch, not on the 60 s interval
            if len(audit.entries()) >= 100:
                break
            threading.Event().wait(0.02)
        assert len(audit.entries()) >= 100
    assert len(audit.entries()) == 120 and audit.verify().ok
    audit.close()


def test_writer_keeps_entries_when_the_database_fails(tmp_path: Path) -> None:
    audit = AuditLog(f"sqlite:///{tmp_path / 'a.db'}")
    writer = AuditWriter(audit, max_batch=10, interval=60.0)
    writer.submit(actor="gw", action="predict", outcome="allow", details={"n": 0})
    writer.submit(actor="gw", action="predict", outcome="allow", details={"n": 1})
    real = audit.append_many

    def broken(records: object) -> None:
        raise BastionError("access database error: disk I/O error")

    audit.append_many = broken  # type: ignore[method-assign]
    with pytest.raises(BastionError, match="disk I/O"):
        writer.flush()
    assert writer.pending == 2  # put back, in order
    audit.append_many = real  # type: ignore[method-assign]
    writer.close()
    assert [e.details["n"] for e in audit.entries()] == [0, 1]
    audit.close()


def test_writer_drops_only_malformed_records(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    audit = AuditLog(f"sqlite:///{tmp_path / 'a.db'}")
    with AuditWriter(audit, interval=60.0) as writer:
        writer.submit(actor="gw", action="predict", outcome="allow")
        writer.submit(actor="gw", action="predict")  # no outcome
        writer.submit(actor="gw", action="read", outcome="allow")
    assert [e.action for e in audit.entries()] == ["predict", "read"]
    assert "audit record dropped" in caplog.text
    audit.close()


def test_writer_validation(tmp_path: Path) -> None:
    audit = AuditLog(f"sqlite:///{tmp_path / 'a.db'}")
    with pytest.raises(ConfigurationError, match="max_batch"):
        AuditWriter(audit, max_batch=0)
    with pytest.raises(ConfigurationError, match="interval"):
        AuditWriter(audit, interval=0)
    audit.close()


def test_store_and_registry_share_a_database(tmp_path: Path) -> None:
    from bastion.artifacts.registry import Registry

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    with Registry(url, (tmp_path / "blobs").as_uri(), actor="alice") as reg:
        with AccessStore(url, cache_ttl=0) as store:
            store.add_identity("alice", actor="root")
            assert store.audit.verify().entries == 1
        assert reg.verify_audit_log().ok


def test_hashes_follow_the_shared_chain_definition(log: AuditLog) -> None:
    from bastion.artifacts.registry.audit import GENESIS, chain_hash

    first, second = log.entries()[:2]
    expected = chain_hash(GENESIS, {"seq": 1, "at": first.at, "actor": "user1",
                                    "action": "predict", "resource": "model:m1",
                                    "outcome": "allow", "details": '{"i":1}'})
    assert first.hash == expected
    assert second.hash == chain_hash(first.hash, {
        "seq": 2, "at": second.at, "actor": "user2", "action": "predict",
        "resource": "model:m2", "outcome": "allow", "details": '{"i":2}'})


def test_writer_and_direct_appends_interleave_safely(db_url: str) -> None:
    audit = AuditLog(db_url)
    writer = AuditWriter(audit, max_batch=7, interval=0.01)

    def direct() -> None:
        for n in range(30):
            audit.append(actor="admin", action="grant", outcome="ok", details={"n": n})

    thread = threading.Thread(target=direct)
    thread.start()
    for n in range(100):
        writer.submit(actor="gw", action="predict", outcome="allow", details={"n": n})
    thread.join()
    writer.close()
    entries = audit.entries()
    assert audit.verify().ok and len(entries) == 130
    assert [e.details["n"] for e in entries if e.actor == "gw"] == list(range(100))
    audit.close()


def test_writer_applies_back_pressure_instead_of_dropping(tmp_path: Path) -> None:
    audit = AuditLog(f"sqlite:///{tmp_path / 'a.db'}")
    with AuditWriter(audit, max_batch=4, interval=0.01, max_pending=4) as writer:
        for n in range(40):  # blocks whenever 4 are queued, until the thread drains them
            writer.submit(actor="gw", action="predict", outcome="allow", details={"n": n})
            assert writer.pending <= 4
    assert [e.details["n"] for e in audit.entries()] == list(range(40))
    audit.close()


def test_verify_while_appending_sees_a_consistent_snapshot(db_url: str) -> None:
    writer_log, reader_log = AuditLog(db_url), AuditLog(db_url)
    stop, started = threading.Event(), threading.Event()

    def append() -> None:
        while not stop.is_set():
            writer_log.append_many([{"actor": "gw", "action": "predict", "outcome": "allow"}
                                    for _ in range(5)])
            started.set()

    thread = threading.Thread(target=append)
    thread.start()
    results = []
    try:
        started.wait(30)
        deadline = time.monotonic() + 60  # verify until the log has grown under our feet
        while time.monotonic() < deadline:
            results.append(reader_log.verify())
            if len(results) >= 10 and results[-1].entries >= results[0].entries + 20:
                break
            time.sleep(0.002)
    finally:
        stop.set()
        thread.join()
        writer_log.close()
        reader_log.close()
    assert all(r.ok for r in results), [r.reason for r in results if not r.ok]
    assert results[-1].entries >= results[0].entries + 20


def test_registry_verify_sees_a_consistent_snapshot(db_url: str, tmp_path: Path) -> None:
    # the registry's log uses the same chain code (bastion.artifacts.registry.audit), and
    # its verify_chain must not report a false "removed from the end" while others append
    from bastion.artifacts.registry import Registry

    blobs = (tmp_path / "blobs").as_uri()
    stop, started = threading.Event(), threading.Event()
    with Registry(db_url, blobs, actor="w") as writer, Registry(db_url, blobs, actor="r") as reader:
        def append() -> None:
            while not stop.is_set():
                writer.list()  # every call appends an audit entry
                started.set()

        thread = threading.Thread(target=append)
        thread.start()
        results = []
        try:
            started.wait(30)
            # verify until the writer has appended 20 more entries (a deadline, not a count:
            # on a busy machine the writer's commits can lag far behind 300 quick verifies)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                results.append(reader.verify_audit_log())
                if len(results) >= 10 and results[-1].entries >= results[0].entries + 20:
                    break
                time.sleep(0.002)
        finally:
            stop.set()
            thread.join()
    assert all(r.ok for r in results), [r.reason for r in results if not r.ok]
    assert results[-1].entries >= results[0].entries + 20
