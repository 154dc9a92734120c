"""The registry's tamper-evident audit log: a hash chain in the metadata database.

Entry *n* stores ``prev_hash`` (the hash of entry *n - 1*, or 64 zeros for the first) and
``hash = SHA-256(prev_hash || canonical JSON of its own fields)``. The ``audit_head`` row holds
the newest sequence number and hash. :func:`verify_chain` recomputes every hash, so an edited
entry, a removed entry (in the middle or at the end), an inserted or reordered entry are all
detected -- unless the attacker can also rewrite every later hash and the head, which is why
the head hash should also be copied somewhere else (a ticket, a log shipper) from time to time.

The chain itself -- :func:`chain_hash` over canonical JSON and :func:`verify_links` -- is generic
and shared with the access-control audit log (:mod:`bastion.access.audit`), which stores
different fields in its own tables.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bastion.artifacts.registry.db import AuditEntry, AuditHead, utcnow

__all__ = [
    "GENESIS",
    "AuditRecord",
    "AuditVerification",
    "append",
    "chain_hash",
    "entry_hash",
    "lock_head",
    "verify_chain",
    "verify_links",
]

GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditRecord:
    """One audit entry as returned by :meth:`Registry.audit_log`."""

    seq: int
    at: str
    actor: str
    action: str
    model: str | None
    version: int | None
    outcome: str
    details: dict[str, Any]
    hash: str


@dataclass(frozen=True)
class AuditVerification:
    """Outcome of verifying the chain: ``ok``, how many entries, and the first bad one."""

    ok: bool
    entries: int
    head_hash: str
    first_bad_seq: int | None = None
    reason: str = ""


def chain_hash(prev_hash: str, fields: Mapping[str, Any]) -> str:
    """SHA-256 of ``prev_hash`` followed by the canonical JSON of ``fields`` (sorted keys)."""
    h = hashlib.sha256(prev_hash.encode())
    h.update(json.dumps(dict(fields), sort_keys=True, separators=(",", ":")).encode())
    return h.hexdigest()


def entry_hash(prev_hash: str, seq: int, at: str, actor: str, action: str,
               model: str | None, version: int | None, outcome: str, details: str) -> str:
    """The hash of one registry entry given the previous entry's hash."""
    return chain_hash(prev_hash, {"seq": seq, "at": at, "actor": actor, "action": action,
                                  "model": model, "version": version, "outcome": outcome,
                                  "details": details})


def verify_links(links: Iterable[tuple[int, str, str, str]], *, head_seq: int,
                 head_hash: str, start_seq: int = 0,
                 start_hash: str = GENESIS) -> AuditVerification:
    """Check a chain given, oldest first, ``(seq, prev_hash, stored_hash, recomputed_hash)``.

    ``recomputed_hash`` is :func:`chain_hash` of the entry's stored ``prev_hash`` and its stored
    fields; ``head_seq``/``head_hash`` are what the head row records (``0``/:data:`GENESIS` for
    an empty log). Detects edited, removed (middle and end), inserted and reordered entries.
    ``start_seq``/``start_hash``: the entry the given links continue (a log whose older
    entries were rotated into sealed segments); ``entries`` counts the links checked.
    """
    prev, expected_seq, count = start_hash, start_seq + 1, 0
    for seq, prev_hash, stored, recomputed in links:
        if seq != expected_seq:
            return AuditVerification(False, count, prev, expected_seq,
                                     f"entry {expected_seq} is missing (next is {seq})")
        if prev_hash != prev:
            return AuditVerification(False, count, prev, seq,
                                     f"entry {seq} does not follow entry {seq - 1}"
                                     " (removed, inserted or reordered entries)")
        if recomputed != stored:
            return AuditVerification(False, count, prev, seq,
                                     f"entry {seq} was edited (its hash does not match)")
        prev, expected_seq, count = stored, expected_seq + 1, count + 1
    if head_seq != expected_seq - 1 or head_hash != prev:
        return AuditVerification(False, count, prev, expected_seq,
                                 f"the log ends at entry {expected_seq - 1} but the head"
                                 f" records entry {head_seq}: entries were removed from the end")
    return AuditVerification(True, count, prev)


def lock_head(session: Session) -> AuditHead:
    """Lock and return the head row; every write transaction calls this first."""
    head = session.execute(
        select(AuditHead).where(AuditHead.id == 1).with_for_update()
    ).scalar_one_or_none()
    if head is None:
        head = AuditHead(id=1, seq=0, hash=GENESIS)
        session.add(head)
        session.flush()
    return head


def append(session: Session, *, actor: str, action: str, model: str | None = None,
           version: int | None = None, outcome: str = "ok",
           details: dict[str, Any] | None = None) -> AuditEntry:
    """Append one entry in the caller's transaction (which must hold the head lock)."""
    head = lock_head(session)
    seq = head.seq + 1
    at = utcnow().isoformat()
    text = json.dumps(details or {}, sort_keys=True, separators=(",", ":"), default=str)
    digest = entry_hash(head.hash, seq, at, actor, action, model, version, outcome, text)
    entry = AuditEntry(seq=seq, at=at, actor=actor, action=action, model=model,
                       version=version, outcome=outcome, details=text,
                       prev_hash=head.hash, hash=digest)
    session.add(entry)
    head.seq, head.hash = seq, digest
    session.flush()
    return entry


def verify_chain(session: Session) -> AuditVerification:
    """Recompute the chain and compare it with the stored hashes and the head.

    The entries and the head must come from one snapshot, or an append committed between the
    two reads looks like entries removed from the end: on PostgreSQL (READ COMMITTED takes a
    snapshot per statement) a fresh ``session`` is switched to REPEATABLE READ; SQLite
    sessions of the registry already hold ``BEGIN IMMEDIATE``.
    """
    bind = session.get_bind()
    if bind.dialect.name == "postgresql" and not session.in_transaction():
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    rows = session.execute(select(AuditEntry).order_by(AuditEntry.seq)).scalars()
    links = ((e.seq, e.prev_hash, e.hash,
              entry_hash(e.prev_hash, e.seq, e.at, e.actor, e.action, e.model, e.version,
                         e.outcome, e.details)) for e in rows)
    head = session.get(AuditHead, 1)
    head_seq, head_hash = (head.seq, head.hash) if head is not None else (0, GENESIS)
    return verify_links(links, head_seq=head_seq, head_hash=head_hash)
