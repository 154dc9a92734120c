"""The access-control audit log: append-only and hash-chained, plus a batching writer.

Entry *n* stores the hash of entry *n - 1* and its own hash over the previous hash and its
canonical JSON fields -- the same chain as the registry's log
(:func:`bastion.artifacts.registry.audit.chain_hash` and
:func:`~bastion.artifacts.registry.audit.verify_links`), in the tables
``bastion_access_audit_log`` and ``bastion_access_audit_head``. :meth:`AuditLog.verify`
detects an edited entry, a removed entry (in the middle or at the end), and an inserted or
reordered one. An attacker who can write the database can still rebuild the whole chain and
the head; copy :meth:`AuditLog.head` somewhere else (a ticket, a log shipper) from time to time
to detect that too.

Writers are serialised: every append transaction first locks the single head row (``SELECT
... FOR UPDATE`` on PostgreSQL; SQLite transactions begin with ``BEGIN IMMEDIATE``), so two
threads or processes never fork the chain.

>>> log = AuditLog("sqlite://")
>>> log.append(actor="alice", action="grant", resource="model:fraud", outcome="ok")
>>> log.append_many([{"actor": "bob", "action": "predict", "outcome": "denied"}])
>>> [e.actor for e in log.entries()], log.verify().ok
(['alice', 'bob'], True)
>>> log.close()
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    create_engine,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from bastion.access.db import (
    AccessAuditEntry,
    AccessAuditHead,
    AccessAuditSegment,
    AccessBase,
    AccessCounterRow,
)
from bastion.artifacts.registry.audit import (
    GENESIS,
    AuditVerification,
    Checkpoint,
    chain_hash,
    verify_links,
)
from bastion.artifacts.registry.db import make_engine
from bastion.errors import BastionError, ConfigurationError

__all__ = ["AccessAuditRecord", "AuditLog", "AuditVerification", "AuditWriter", "SealedSegment"]

log = logging.getLogger(__name__)

_ENTRIES = cast(Table, AccessAuditEntry.__table__)  # Core insert: one executemany per batch
_HEAD = cast(Table, AccessAuditHead.__table__)
_COUNTERS = cast(Table, AccessCounterRow.__table__)
_FIELDS = frozenset({"actor", "action", "resource", "outcome", "details", "at"})
_LIMITS = {"actor": 200, "action": 64, "resource": 200, "outcome": 32}


@dataclass(frozen=True)
class AccessAuditRecord:
    """One entry of the access audit log, as returned by :meth:`AuditLog.entries`."""

    seq: int
    at: str
    actor: str
    action: str
    resource: str | None
    outcome: str
    details: dict[str, Any]
    hash: str


@dataclass(frozen=True)
class SealedSegment:
    """Entries ``first_seq..last_seq`` moved by :meth:`AuditLog.rotate` into ``file`` (JSON
    lines, SHA-256 ``sha256``); the chain runs from ``first_prev_hash`` to ``last_hash``."""

    first_seq: int
    last_seq: int
    first_prev_hash: str
    last_hash: str
    sha256: str
    file: str
    sealed_at: str


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def _fields(seq: int, at: str, actor: str, action: str, resource: str | None, outcome: str,
            details: str) -> dict[str, Any]:
    return {"seq": seq, "at": at, "actor": actor, "action": action, "resource": resource,
            "outcome": outcome, "details": details}


def _clean(record: Mapping[str, Any]) -> dict[str, Any]:
    """Validate one record; fill ``at`` and canonicalise ``details`` to JSON text."""
    unknown = set(record) - _FIELDS
    if unknown:
        raise ConfigurationError(f"unknown audit field(s) {sorted(unknown)}; use {sorted(_FIELDS)}")
    out: dict[str, Any] = {}
    for name in ("actor", "action", "outcome"):
        value = record.get(name)
        if not isinstance(value, str) or not value:
            raise ConfigurationError(f"audit field {name!r} must be a non-empty string")
        out[name] = value
    resource = record.get("resource")
    if resource is not None and not isinstance(resource, str):
        raise ConfigurationError("audit field 'resource' must be a string or None")
    out["resource"] = resource
    for name, limit in _LIMITS.items():
        if out[name] is not None and len(out[name]) > limit:
            out[name] = out[name][: limit - 1] + "…"
    at = record.get("at") or _now()
    out["at"] = at if isinstance(at, str) else str(at)
    details = record.get("details") or {}
    if not isinstance(details, Mapping):
        raise ConfigurationError("audit field 'details' must be a mapping")
    out["details"] = json.dumps(dict(details), sort_keys=True, separators=(",", ":"),
                                default=str)
    return out


def _snapshot_engine(engine: Engine) -> Engine:
    """An engine whose transactions read one snapshot and take no write lock.

    PostgreSQL: the same pool at REPEATABLE READ (the default READ COMMITTED takes a new
    snapshot per statement). SQLite file: a second engine whose transactions begin with a
    plain (deferred) ``BEGIN`` -- a WAL read snapshot -- instead of the writers' ``BEGIN
    IMMEDIATE``, so reads neither wait for nor block the writers. In-memory SQLite: the same
    engine (one connection, one thread).
    """
    url = engine.url
    if url.get_backend_name() == "postgresql":
        return engine.execution_options(isolation_level="REPEATABLE READ")
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return engine
    reader = create_engine(url, connect_args={"timeout": 60.0, "check_same_thread": False})

    @event.listens_for(reader, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves

    @event.listens_for(reader, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")

    return reader


class AuditLog:
    """Append-only, hash-chained audit log in ``url`` (or an existing SQLAlchemy engine).

    On SQLite (WAL) a commit survives a crash of the process (SIGKILL) at once; with
    ``fsync=False`` (``PRAGMA synchronous=NORMAL``, the default) the last commits may still
    be lost if the machine itself loses power or crashes; ``fsync=True`` (``FULL``) syncs
    every commit to disk (several ms each). PostgreSQL follows its ``synchronous_commit``.

    ``append`` and ``append_many`` commit synchronously (one transaction each); for a hot path
    use an :class:`AuditWriter`. ``entries`` returns the oldest first (the newest ``limit`` if
    given); ``verify`` recomputes the whole chain.
    """

    def __init__(self, url: str | Engine = "sqlite:///bastion-access.db", *,
                 fsync: bool = False) -> None:
        self._own_engine = isinstance(url, str)
        self.engine: Engine = make_engine(url) if isinstance(url, str) else url
        if self._own_engine and self.engine.url.get_backend_name() == "sqlite":
            level = "FULL" if fsync else "NORMAL"

            @event.listens_for(self.engine, "connect")
            def _sync(dbapi_connection: Any, _record: Any) -> None:
                dbapi_connection.execute(f"PRAGMA synchronous={level}")
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_engine = _snapshot_engine(self.engine)
        self._read_sessions = sessionmaker(self._read_engine, expire_on_commit=False)
        self._lock = threading.Lock()  # one writer per process: no busy waits between threads
        self._create_schema()

    # ------------------------------------------------------------------ plumbing

    def _create_schema(self) -> None:
        for attempt in range(3):
            try:
                AccessBase.metadata.create_all(self.engine)
                with self._sessions.begin() as s:
                    self._lock_head(s)
                return
            except (IntegrityError, ProgrammingError, OperationalError) as exc:
                if attempt == 2:
                    where = self.engine.url.render_as_string(hide_password=True)
                    raise ConfigurationError(
                        f"cannot open the access database {where}: {exc.orig or exc}"
                    ) from exc

    @staticmethod
    def _lock_head(session: Session) -> AccessAuditHead:
        head = session.execute(
            select(AccessAuditHead).where(AccessAuditHead.id == 1).with_for_update()
        ).scalar_one_or_none()
        if head is None:
            head = AccessAuditHead(id=1, seq=0, hash=GENESIS)
            session.add(head)
            session.flush()
        return head

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """A write transaction holding the audit write lock; use :meth:`record` inside it."""
        with self._lock:
            try:
                with self._sessions.begin() as s:
                    self._lock_head(s)
                    yield s
            except SQLAlchemyError as exc:
                orig = getattr(exc, "orig", None) or exc
                raise BastionError(f"access database error: {orig}") from exc

    @contextlib.contextmanager
    def reading(self) -> Iterator[Session]:
        """A read-only session on one consistent snapshot (so that :meth:`verify` never sees
        entries without their head, or the reverse, while others append), which does not
        block writers; database errors become :class:`BastionError`."""
        try:
            with self._read_sessions() as s:
                yield s
        except SQLAlchemyError as exc:
            orig = getattr(exc, "orig", None) or exc
            raise BastionError(f"access database error: {orig}") from exc

    def record(self, session: Session, records: Sequence[Mapping[str, Any]]) -> None:
        """Append ``records`` inside a :meth:`transaction` (the head lock is already held)."""
        self._record_clean(session, [_clean(r) for r in records])

    def _record_clean(self, session: Session, cleaned: list[dict[str, Any]]) -> None:
        if not cleaned:
            return
        head = self._lock_head(session)
        rows, seq, prev = _chain_rows(cleaned, head.seq, head.hash)
        session.execute(insert(_ENTRIES), rows)  # one executemany
        head.seq, head.hash = seq, prev
        session.flush()

    def close(self) -> None:
        """Release the database connections (only if this log created the engine)."""
        if self._read_engine.url.get_backend_name() == "sqlite" \
                and self._read_engine is not self.engine:
            self._read_engine.dispose()  # the second engine made by _snapshot_engine
        if self._own_engine:
            self.engine.dispose()

    # ------------------------------------------------------------------ API

    def append(self, *, actor: str, action: str, resource: str | None = None, outcome: str,
               details: Mapping[str, Any] | None = None) -> None:
        """Append one entry and commit."""
        self.append_many([{"actor": actor, "action": action, "resource": resource,
                           "outcome": outcome, "details": details}])

    def append_many(self, records: Sequence[Mapping[str, Any]], *,
                    counters: Mapping[str, int] | None = None) -> None:
        """Append several entries in one transaction (all or none). Keys of each record:
        ``actor``, ``action``, ``outcome`` (required), ``resource``, ``details``, ``at``.

        ``counters`` (name -> amount) are added to named counters in the same transaction,
        so that a counter (a lifetime query budget) is exactly as durable as the entries
        that account for it; read them with :meth:`counters`."""
        cleaned = [_clean(r) for r in records]  # validate before taking the lock
        if not cleaned and not counters:
            return
        with self._lock:  # the hot path in SQLAlchemy Core: a third of the ORM's CPU
            try:
                with self.engine.begin() as conn:
                    self._append_core(conn, cleaned, counters or {})
            except SQLAlchemyError as exc:
                orig = getattr(exc, "orig", None) or exc
                raise BastionError(f"access database error: {orig}") from exc

    def _append_core(self, conn: Connection, cleaned: list[dict[str, Any]],
                     counters: Mapping[str, int]) -> None:
        head = conn.execute(select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == 1)
                            .with_for_update()).one_or_none()
        if head is None:
            conn.execute(insert(_HEAD).values(id=1, seq=0, hash=GENESIS))
        seq, prev = (head.seq, head.hash) if head is not None else (0, GENESIS)
        if cleaned:
            rows, seq, prev = _chain_rows(cleaned, seq, prev)
            conn.execute(insert(_ENTRIES), rows)  # one executemany
            conn.execute(update(_HEAD).where(_HEAD.c.id == 1).values(seq=seq, hash=prev))
        amounts = [{"name": n, "value": int(v)} for n, v in sorted(counters.items()) if v]
        if amounts:
            from sqlalchemy.dialects import postgresql, sqlite

            upsert: Any = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
            stmt = upsert(_COUNTERS)
            conn.execute(stmt.on_conflict_do_update(
                index_elements=[_COUNTERS.c.name],
                set_={"value": _COUNTERS.c.value + stmt.excluded.value}), amounts)

    def counters(self, prefix: str = "") -> dict[str, int]:
        """The named counters (those whose name starts with ``prefix``)."""
        with self.reading() as s:
            rows = s.execute(select(AccessCounterRow.name, AccessCounterRow.value)
                             .where(AccessCounterRow.name.startswith(prefix, autoescape=True)))
            return {name: int(value) for name, value in rows}

    def entries(self, *, limit: int | None = None) -> list[AccessAuditRecord]:
        """The entries, oldest first (the newest ``limit`` if given)."""
        if limit is not None and limit < 0:
            raise ConfigurationError(f"limit must be >= 0, got {limit}")
        with self.reading() as s:
            q = select(AccessAuditEntry).order_by(AccessAuditEntry.seq.desc())
            if limit is not None:
                q = q.limit(limit)
            rows = list(s.execute(q).scalars())[::-1]
        return [AccessAuditRecord(seq=r.seq, at=r.at, actor=r.actor, action=r.action,
                                  resource=r.resource, outcome=r.outcome,
                                  details=json.loads(r.details), hash=r.hash) for r in rows]

    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the newest entry: copy it elsewhere to anchor the chain."""
        with self.reading() as s:
            row = s.get(AccessAuditHead, 1)
            return (row.seq, row.hash) if row is not None else (0, GENESIS)

    def segments(self) -> list[SealedSegment]:
        """The sealed segments made by :meth:`rotate`, oldest first."""
        with self.reading() as s:
            rows = s.execute(select(AccessAuditSegment)
                             .order_by(AccessAuditSegment.first_seq)).scalars().all()
        return [SealedSegment(first_seq=r.first_seq, last_seq=r.last_seq,
                              first_prev_hash=r.first_prev_hash, last_hash=r.last_hash,
                              sha256=r.sha256, file=r.file, sealed_at=r.sealed_at)
                for r in rows]

    def rotate(self, archive: str | os.PathLike[str], *, keep: int,
               actor: str = "retention") -> SealedSegment | None:
        """Move all but the newest ``keep`` entries into a sealed segment file in ``archive``.

        The entries are written as JSON lines (every stored field, hashes included) to a
        temporary file, synced and renamed to ``access-audit-FIRST-LAST.jsonl``; then one
        transaction records the segment (its seq range, the hash it starts from and ends at,
        the file's SHA-256), deletes those entries from the live table and appends a
        ``seal_segment`` entry naming the segment to the chain. :meth:`verify` then checks
        that the segments and the live entries form one unbroken chain (and, given the
        archive, re-verifies every segment file). Returns None when there is nothing to move.
        """
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise ConfigurationError(f"keep must be an integer >= 0, got {keep!r}")
        folder = Path(archive)
        folder.mkdir(parents=True, exist_ok=True)
        e = AccessAuditEntry
        with self.transaction() as s:
            head = self._lock_head(s)
            first = s.execute(select(e.seq).order_by(e.seq).limit(1)).scalar_one_or_none()
            last = head.seq - keep
            if first is None or last < first:
                return None
            rows = s.execute(select(e).where(e.seq <= last).order_by(e.seq)).scalars().all()
            name = f"access-audit-{first:012d}-{last:012d}.jsonl"
            digest = hashlib.sha256()
            fd, tmp = tempfile.mkstemp(prefix=".seg-", dir=folder)
            try:
                with os.fdopen(fd, "wb") as fh:
                    for r in rows:
                        line = json.dumps(_fields(r.seq, r.at, r.actor, r.action, r.resource,
                                                  r.outcome, r.details)
                                          | {"prev_hash": r.prev_hash, "hash": r.hash},
                                          sort_keys=True, separators=(",", ":")).encode() + b"\n"
                        digest.update(line)
                        fh.write(line)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, folder / name)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            seg = SealedSegment(first_seq=first, last_seq=last,
                                first_prev_hash=rows[0].prev_hash, last_hash=rows[-1].hash,
                                sha256=digest.hexdigest(), file=name, sealed_at=_now())
            s.add(AccessAuditSegment(**seg.__dict__))
            s.execute(delete(e).where(e.seq <= last))
            self._record_clean(s, [_clean({
                "actor": actor, "action": "seal_segment", "outcome": "ok",
                "details": {"first_seq": first, "last_seq": last, "last_hash": seg.last_hash,
                            "sha256": seg.sha256, "file": name}})])
        return seg

    def verify(self, checkpoint: Checkpoint | None = None, *,
               archive: str | os.PathLike[str] | None = None) -> AuditVerification:
        """Recompute the chain; ``ok`` is false at the first edited, missing or moved entry.

        With the latest signed ``checkpoint`` (see :mod:`bastion.artifacts.registry.audit`),
        also false if the log was truncated below it, wiped or recomputed since.

        Streams the entries (constant memory) on one snapshot, so appends by others while it
        runs neither disturb it nor wait for it. Entries rotated into sealed segments
        (:meth:`rotate`) are checked through the segments' seals: each segment must start
        where the previous one ended and the live entries where the last one ended; with
        ``archive`` (the folder of the segment files), every segment file is re-read and its
        own chain and SHA-256 checked too. ``entries`` counts every entry checked.
        """
        e = AccessAuditEntry
        with self.reading() as s:
            head = s.get(AccessAuditHead, 1)
            head_seq, head_hash = (head.seq, head.hash) if head is not None else (0, GENESIS)
            start_seq, start_hash, count = 0, GENESIS, 0
            for seg in s.execute(select(AccessAuditSegment)
                                 .order_by(AccessAuditSegment.first_seq)).scalars():
                if seg.first_seq != start_seq + 1 or seg.first_prev_hash != start_hash:
                    return AuditVerification(False, count, start_hash, start_seq + 1,
                                             f"sealed segment {seg.file} does not continue "
                                             f"the chain at entry {start_seq + 1}")
                if archive is not None:
                    bad = _verify_segment(Path(archive) / seg.file, seg)
                    if bad is not None:
                        return AuditVerification(False, count, start_hash, seg.first_seq, bad)
                count += seg.last_seq - seg.first_seq + 1
                start_seq, start_hash = seg.last_seq, seg.last_hash
            rows = s.execute(
                select(e.seq, e.at, e.actor, e.action, e.resource, e.outcome, e.details,
                       e.prev_hash, e.hash).order_by(e.seq).execution_options(yield_per=2000))
            links = ((seq, prev, digest,
                      chain_hash(prev, _fields(seq, at, actor, action, resource, outcome,
                                               details)))
                     for seq, at, actor, action, resource, outcome, details, prev, digest
                     in rows)
            try:
                out = verify_links(links, head_seq=head_seq, head_hash=head_hash,
                                   checkpoint=checkpoint, start_seq=start_seq,
                                   start_hash=start_hash)
            finally:
                rows.close()  # a server-side cursor on PostgreSQL, maybe not exhausted
        return dataclasses.replace(out, entries=out.entries + count) if count else out


def _verify_segment(path: Path, seg: AccessAuditSegment) -> str | None:
    """Why the segment file at ``path`` does not match its seal, or None when it does."""
    digest = hashlib.sha256()
    prev, expected = seg.first_prev_hash, seg.first_seq
    try:
        with path.open("rb") as fh:
            for line in fh:
                digest.update(line)
                r = json.loads(line)
                fields = _fields(r["seq"], r["at"], r["actor"], r["action"], r["resource"],
                                 r["outcome"], r["details"])
                if r["seq"] != expected or r["prev_hash"] != prev \
                        or chain_hash(prev, fields) != r["hash"]:
                    return f"entry {expected} in sealed segment {seg.file} was altered"
                prev, expected = r["hash"], expected + 1
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"sealed segment {seg.file} cannot be read: {exc}"
    if digest.hexdigest() != seg.sha256 or expected != seg.last_seq + 1 \
            or prev != seg.last_hash:
        return f"sealed segment {seg.file} does not match its seal (SHA-256 or range)"
    return None


class AuditWriter:
    """Audit appends for a hot path: a background thread commits what is queued, in groups.

    :meth:`submit` timestamps the record, queues it and returns a
    :class:`~concurrent.futures.Future` that is resolved once the record is committed (or
    fails with the database's error). A daemon thread writes what is queued with
    :meth:`AuditLog.append_many` -- one transaction per group of at most ``max_batch``
    records -- in submit order. Two modes:

    - ``durable=True`` (group commit): the thread writes as soon as anything is queued;
      records submitted while a transaction is running are written together in the next one,
      so concurrent callers share a commit. A caller that waits for its future before
      answering (the gateway does, by default) never answers a request whose entry a crash
      could lose: SIGKILL of the process loses only records whose callers are still waiting.
      (On SQLite a commit survives a crash of the process; surviving power loss also needs
      ``AuditLog(fsync=True)``, see :class:`AuditLog`.)
    - ``durable=False`` (batched): the thread writes whenever ``max_batch`` records are
      waiting or every ``interval`` seconds; callers do not wait. A crash (SIGKILL, power
      loss) loses what was queued and not yet committed: at most ``interval`` seconds or
      ``max_batch`` records of traffic, plus whatever piled up while the database was
      unreachable. Such loss leaves no gap in the chain, so it cannot be detected afterwards.

    In both modes a batch is one transaction, so the chain is never half-written; a failed
    batch is put back at the head of the queue and retried (the error logged, the waiting
    futures left pending). When ``max_pending`` records are queued (the database is down or
    too slow), :meth:`submit` blocks until the writer catches up rather than drop entries.
    :meth:`flush` writes everything submitted so far and raises if the database refuses;
    :meth:`close` (also run at interpreter exit) stops the thread and flushes. An entry's
    ``at`` is the time it was submitted; its ``seq`` the order in which it was written.
    ``counters`` given to :meth:`submit` are added in the same transaction as the record
    (see :meth:`AuditLog.append_many`).
    """

    def __init__(self, log: AuditLog, *, max_batch: int = 500, interval: float = 0.2,
                 max_pending: int = 100_000, durable: bool = False) -> None:
        if max_batch < 1:
            raise ConfigurationError(f"max_batch must be >= 1, got {max_batch}")
        if not interval > 0:
            raise ConfigurationError(f"interval must be > 0 seconds, got {interval}")
        if max_pending < max_batch:
            raise ConfigurationError(
                f"max_pending ({max_pending}) must be >= max_batch ({max_batch})")
        url = log.engine.url
        if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
            raise ConfigurationError(
                "an in-memory SQLite database is private to one thread, so the background"
                " writer cannot reach it; use a file (sqlite:///PATH) or PostgreSQL")
        self.log = log
        self.max_batch, self.interval, self.max_pending = max_batch, float(interval), max_pending
        self.durable = bool(durable)
        self._pending: collections.deque[_Queued] = collections.deque()
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="bastion-audit-writer",
                                        daemon=True)
        self._thread.start()
        atexit.register(self._close_at_exit)

    @property
    def pending(self) -> int:
        """How many submitted records are not yet written."""
        return len(self._pending)

    def submit(self, *, counters: Mapping[str, int] | None = None,
               **record: Any) -> Future[None]:
        """Queue one record (``actor``, ``action``, ``outcome``, ``resource``, ``details``);
        the future is resolved when it is committed."""
        if not record.get("at"):
            record["at"] = _now()
        done: Future[None] = Future()
        with self._cond:
            if self._closed:
                raise BastionError("the audit writer is closed; no more entries can be queued")
            if len(self._pending) >= self.max_pending:  # back-pressure, never drop
                self._cond.notify_all()
                self._cond.wait_for(lambda: len(self._pending) < self.max_pending
                                    or self._closed)
                if self._closed:
                    raise BastionError("the audit writer was closed while this entry waited")
            self._pending.append(_Queued(record, counters, done))
            if self.durable or len(self._pending) >= self.max_batch:
                self._cond.notify()
        return done

    def _write_some(self) -> int:
        """Write one batch (caller holds ``_write_lock``); returns how many were written."""
        with self._cond:
            n = min(len(self._pending), self.max_batch)
            batch = [self._pending.popleft() for _ in range(n)]
        if not batch:
            return 0
        good: list[_Queued] = []
        for q in batch:  # a malformed record must not block the ones behind it
            try:
                _clean(q.record)
                good.append(q)
            except ConfigurationError as exc:
                log.error("audit record dropped (%s): %r", exc, {k: q.record.get(k) for k in
                                                                  ("actor", "action")})
                q.done.set_exception(exc)
        counters: dict[str, int] = {}
        for q in good:
            for name, amount in (q.counters or {}).items():
                counters[name] = counters.get(name, 0) + int(amount)
        try:
            records = [q.record for q in good]
            if counters:
                self.log.append_many(records, counters=counters)
            else:
                self.log.append_many(records)
        except BaseException:
            with self._cond:
                self._pending.extendleft(reversed(good))
            raise
        for q in good:
            q.done.set_result(None)
        with self._cond:
            self._cond.notify_all()
        return n

    def flush(self) -> None:
        """Write everything submitted so far; raises if the database refuses."""
        with self._write_lock:
            while self._write_some():
                pass

    def _ready(self) -> bool:
        return self._closed or len(self._pending) >= (1 if self.durable else self.max_batch)

    def _loop(self) -> None:
        delay = self.interval
        while True:
            with self._cond:
                self._cond.wait_for(self._ready, timeout=delay)
                if self._closed:
                    return
            try:
                self.flush()
                delay = self.interval
            except Exception as exc:  # keep running; the entries stay queued
                log.error("audit writer: cannot write %d queued entries, will retry: %s",
                          self.pending, exc)
                delay = min(delay * 2, 5.0)
                if self.durable:  # wait before retrying even though entries are queued
                    with self._cond:
                        self._cond.wait_for(lambda: self._closed, timeout=delay)

    def close(self) -> None:
        """Stop the background thread and write everything still queued (idempotent)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        atexit.unregister(self._close_at_exit)
        self.flush()

    def _close_at_exit(self) -> None:
        try:
            self.close()
        except Exception as exc:
            log.error("audit writer: %d entries could not be written at exit: %s",
                      self.pending, exc)

    def __enter__(self) -> AuditWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class _Queued:
    record: dict[str, Any]
    counters: Mapping[str, int] | None
    done: Future[None]


def _chain_rows(cleaned: list[dict[str, Any]], seq: int, prev: str
                ) -> tuple[list[dict[str, Any]], int, str]:
    """The rows that chain ``cleaned`` after entry ``seq`` with hash ``prev``, and the new head."""
    rows = []
    for r in cleaned:
        seq += 1
        digest = chain_hash(prev, _fields(seq, r["at"], r["actor"], r["action"],
                                          r["resource"], r["outcome"], r["details"]))
        rows.append({**r, "seq": seq, "prev_hash": prev, "hash": digest})
        prev = digest
    return rows, seq, prev
