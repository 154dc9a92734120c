"""The audit writer's durable (group commit) mode, counters committed with entries, and
retention: rotating old entries into sealed segments that still verify as one chain."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from bastion.access import AuditLog, AuditWriter
from bastion.errors import BastionError


def _log(tmp_path: Path) -> AuditLog:
    return AuditLog(f"sqlite:///{tmp_path / 'a.db'}")


def test_durable_writer_commits_without_waiting_for_the_interval(tmp_path: Path) -> None:
    audit = _log(tmp_path)
    # interval an hour: a batched writer would hold these; a durable one commits at once
    with AuditWriter(audit, interval=3600.0, durable=True) as writer:
        futures = [writer.submit(actor="gw", action="predict", outcome="allowed",
                                 details={"n": i}) for i in range(5)]
        for f in futures:
            f.result(timeout=30)
        assert [e.details["n"] for e in audit.entries()] == [0, 1, 2, 3, 4]
    audit.close()


def test_batched_writer_holds_entries_until_the_interval(tmp_path: Path) -> None:
    audit = _log(tmp_path)
    writer = AuditWriter(audit, interval=3600.0, durable=False)
    done = writer.submit(actor="gw", action="predict", outcome="allowed")
    assert not done.done() and audit.entries() == []
    writer.close()
    assert done.done() and len(audit.entries()) == 1
    audit.close()


def test_group_commit_shares_transactions_between_threads(tmp_path: Path) -> None:
    audit = _log(tmp_path)
    commits: list[int] = []
    real = audit.append_many
    in_first, gate = threading.Event(), threading.Event()

    def gated(records, **kw):  # type: ignore[no-untyped-def]
        in_first.set()
        assert gate.wait(timeout=30)  # the first commit is slow: others queue behind it
        commits.append(len(records))
        real(records, **kw)

    audit.append_many = gated  # type: ignore[method-assign]
    writer = AuditWriter(audit, interval=3600.0, durable=True)
    first = writer.submit(actor="c0", action="predict", outcome="allowed")
    assert in_first.wait(timeout=30)
    futures: list = []

    def client(k: int) -> None:
        futures.extend(writer.submit(actor=f"c{k}", action="predict", outcome="allowed",
                                     details={"i": i}) for i in range(10))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    gate.set()
    for f in [first, *futures]:
        f.result(timeout=30)
    writer.close()
    assert commits == [1, 80]  # 80 concurrent records, one transaction
    assert len(audit.entries()) == 81 and audit.verify().ok
    audit.close()


def test_durable_futures_stay_pending_while_the_database_fails(tmp_path: Path) -> None:
    audit = _log(tmp_path)
    real = audit.append_many
    fail = threading.Event()
    fail.set()

    def flaky(records, **kw):  # type: ignore[no-untyped-def]
        if fail.is_set():
            raise BastionError("access database error: disk I/O error")
        real(records, **kw)

    audit.append_many = flaky  # type: ignore[method-assign]
    writer = AuditWriter(audit, interval=0.05, durable=True)
    done = writer.submit(actor="gw", action="predict", outcome="allowed")
    with pytest.raises(TimeoutError):
        done.result(timeout=0.3)
    fail.clear()
    done.result(timeout=30)  # retried and committed once
    writer.close()
    assert len(audit.entries()) == 1
    audit.close()


def test_counters_commit_with_the_entries(tmp_path: Path) -> None:
    audit = _log(tmp_path)
    with AuditWriter(audit, durable=True) as writer:
        writer.submit(actor="a", action="predict", outcome="allowed",
                      counters={"budget:k1": 3}).result(timeout=30)
        writer.submit(actor="a", action="predict", outcome="allowed",
                      counters={"budget:k1": 2, "budget:k2": 1}).result(timeout=30)
    assert audit.counters("budget:") == {"budget:k1": 5, "budget:k2": 1}
    assert audit.counters("other") == {}
    audit.close()


def _fill(audit: AuditLog, n: int, start: int = 0) -> None:
    audit.append_many([{"actor": "gw", "action": "predict", "outcome": "allowed",
                        "details": {"i": start + i}} for i in range(n)])


def test_rotate_seals_segments_and_the_chain_verifies_across_them(tmp_path: Path) -> None:
    audit = _log(tmp_path)
    archive = tmp_path / "archive"
    _fill(audit, 30)
    seg = audit.rotate(archive, keep=10)
    assert seg is not None and (seg.first_seq, seg.last_seq) == (1, 20)
    live = audit.entries()
    assert live[0].seq == 21 and live[-1].action == "seal_segment"
    assert live[-1].details["sha256"] == seg.sha256
    _fill(audit, 15, 30)
    seg2 = audit.rotate(archive, keep=5)
    assert seg2 is not None and seg2.first_seq == 21
    assert audit.rotate(archive, keep=1000) is None
    result = audit.verify(archive=archive)
    assert result.ok, result.reason
    assert result.entries == audit.head()[0] == 47  # 45 entries + 2 seals
    assert audit.verify().ok  # without the archive: the seals' links only
    assert [s.file for s in audit.segments()] == sorted(p.name for p in archive.iterdir())
    audit.close()


def test_an_altered_segment_file_or_a_removed_seal_is_detected(tmp_path: Path) -> None:
    audit = _log(tmp_path)
    archive = tmp_path / "archive"
    _fill(audit, 20)
    seg = audit.rotate(archive, keep=5)
    assert seg is not None
    path = archive / seg.file
    lines = path.read_text().splitlines()
    row = json.loads(lines[3])
    row["actor"] = "mallory"
    path.write_text("\n".join([*lines[:3], json.dumps(row), *lines[4:]]) + "\n")
    result = audit.verify(archive=archive)
    assert not result.ok and result.first_bad_seq == 1 and "altered" in result.reason
    assert audit.verify().ok  # the seal links alone cannot see inside the file
    # dropping the seal row leaves live entries that continue nothing
    from sqlalchemy import text

    with audit.engine.begin() as conn:
        conn.execute(text("DELETE FROM bastion_access_audit_segments"))
    result = audit.verify()
    assert not result.ok and result.first_bad_seq == 1
    audit.close()


def test_rotate_refuses_a_bad_keep(tmp_path: Path) -> None:
    from bastion.errors import ConfigurationError

    audit = _log(tmp_path)
    with pytest.raises(ConfigurationError, match="keep"):
        audit.rotate(tmp_path, keep=-1)
    audit.close()


@pytest.mark.parametrize(("fsync", "level"), [(False, 1), (True, 2)])
def test_sqlite_sync_level_follows_fsync(tmp_path: Path, fsync: bool, level: int) -> None:
    audit = AuditLog(f"sqlite:///{tmp_path / 'a.db'}", fsync=fsync)
    with audit.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == level  # NORMAL, FULL
    audit.close()
