"""The registry's tamper-evident audit log: a hash chain in the metadata database, anchored.

Entry *n* stores ``prev_hash`` (the hash of entry *n - 1*, or 64 zeros for the first) and
``hash = SHA-256(prev_hash || canonical JSON of its own fields)``. The ``audit_head`` row holds
the newest sequence number and hash. :func:`verify_chain` recomputes every hash, so an edited
entry, a removed entry (in the middle or at the end), an inserted or reordered entry are all
detected.

The chain alone does not stop whoever can write the database: they can delete the tail and
roll the head back, wipe the log, or recompute every hash after an edit. The *checkpoint*
closes that gap (the transparency-log pattern of Certificate Transparency and Go's checksum
database): from time to time a process holding a private key that the database writer does
not hold signs ``(log, seq, head hash, time)`` -- a :class:`Checkpoint` -- and keeps it
outside the database. :func:`verify_links` given the latest checkpoint then also requires
that the log still reaches entry ``seq`` and that the entry's hash is the signed one: a
truncated, wiped or recomputed log no longer verifies. What was appended after the latest
checkpoint is protected by the chain only until the next checkpoint, so checkpoint as often as
that window matters (``bastion registry audit-log checkpoint --every 300``).

The chain itself -- :func:`chain_hash` over canonical JSON, :func:`verify_links` and the
checkpoints -- is generic and shared with the access-control audit log
(:mod:`bastion.access.audit`), which stores different fields in its own tables.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bastion.artifacts.registry.db import AuditEntry, AuditHead, utcnow
from bastion.artifacts.signing import (
    PrivateKey,
    PublicKey,
    atomic_write,
    load_private_key,
    load_public_key,
    public_key_hint,
    read_small,
    sign_bytes,
    verify_bytes,
)
from bastion.errors import ConfigurationError, InputError, SignatureError

__all__ = [
    "CHECKPOINT_TYPE",
    "GENESIS",
    "AuditRecord",
    "AuditVerification",
    "Checkpoint",
    "advance_checkpoint",
    "append",
    "chain_hash",
    "entry_hash",
    "load_checkpoint",
    "lock_head",
    "save_checkpoint",
    "sign_checkpoint",
    "verify_chain",
    "verify_links",
]

GENESIS = "0" * 64
#: the ``type`` of a signed checkpoint document
CHECKPOINT_TYPE = "bastion.audit-checkpoint/1"


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
    #: the signed checkpoint the log was checked against (``None``: the chain alone)
    checkpoint: Checkpoint | None = None


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement that audit log ``log`` had ``seq`` entries ending in ``hash``.

    Made by :func:`sign_checkpoint` with a key the database writer does not hold; stored
    outside the database (:func:`save_checkpoint`). ``key_hint`` is the SHA-256 of the PEM
    public key, ``signature`` the base64 signature of :meth:`payload`.
    """

    log: str
    seq: int
    hash: str
    at: str
    key_hint: str
    signature: str

    def payload(self) -> bytes:
        """The signed bytes: canonical JSON of the type, log, seq, hash and time."""
        return json.dumps({"type": CHECKPOINT_TYPE, "log": self.log, "seq": self.seq,
                           "hash": self.hash, "at": self.at},
                          sort_keys=True, separators=(",", ":")).encode()

    def to_dict(self) -> dict[str, Any]:
        return {"type": CHECKPOINT_TYPE, "log": self.log, "seq": self.seq, "hash": self.hash,
                "at": self.at, "key_hint": self.key_hint, "signature": self.signature}

    @classmethod
    def from_dict(cls, data: Any) -> Checkpoint:
        try:
            if data["type"] != CHECKPOINT_TYPE:
                raise SignatureError(f"not a {CHECKPOINT_TYPE} document: type {data['type']!r}")
            seq = data["seq"]
            if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
                raise SignatureError(f"checkpoint seq must be a whole number, got {seq!r}")
            return cls(log=str(data["log"]), seq=seq, hash=str(data["hash"]),
                       at=str(data["at"]), key_hint=str(data["key_hint"]),
                       signature=str(data["signature"]))
        except (KeyError, TypeError) as exc:
            raise SignatureError(f"malformed checkpoint: missing or bad field {exc}") from None

    def verify(self, key: PublicKey | str | os.PathLike[str], *, log: str) -> Checkpoint:
        """Return self if ``key`` signed it for ``log``; SignatureError otherwise."""
        pub = load_public_key(key)
        if self.log != log:
            raise SignatureError(f"the checkpoint is of log {self.log!r}, not {log!r}")
        if self.key_hint != public_key_hint(pub):
            raise SignatureError("the checkpoint was signed with another key than the one given")
        try:
            raw = base64.b64decode(self.signature, validate=True)
        except ValueError:
            raise SignatureError("the checkpoint's signature is not base64") from None
        if not verify_bytes(pub, self.payload(), raw):
            raise SignatureError("the checkpoint's signature does not verify: it was altered")
        return self


def sign_checkpoint(log: str, seq: int, head_hash: str,
                    key: PrivateKey | str | os.PathLike[str], *,
                    password: bytes | None = None) -> Checkpoint:
    """Sign the head ``(seq, head_hash)`` of audit log ``log`` (e.g. ``"bastion.registry"``)."""
    private = load_private_key(key, password=password)
    unsigned = Checkpoint(log=log, seq=seq, hash=head_hash,
                          at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                          key_hint=public_key_hint(private.public_key()), signature="")
    raw = sign_bytes(private, unsigned.payload())
    return Checkpoint(**{**unsigned.__dict__, "signature": base64.b64encode(raw).decode()})


def save_checkpoint(path: str | os.PathLike[str], checkpoint: Checkpoint) -> Path:
    """Write a checkpoint as JSON (through a temporary file and a rename)."""
    out = Path(path)
    atomic_write(out, json.dumps(checkpoint.to_dict(), indent=2).encode() + b"\n", mode=0o644)
    return out


def advance_checkpoint(path: str | os.PathLike[str], key: PrivateKey, log: str,
                       verify: Callable[[Checkpoint | None], AuditVerification]) -> Checkpoint:
    """Sign a new checkpoint of a log into ``path``, the way a transparency log advances.

    ``verify(previous)`` verifies the log against the previous checkpoint in ``path`` (if
    any, checked with ``key``'s public half); only a log that still verifies gets a new
    signed head -- one rewritten since is refused with SignatureError and nothing is written.
    """
    previous = (load_checkpoint(path, key.public_key(), log=log)
                if os.path.lexists(path) else None)
    result = verify(previous)
    if not result.ok:
        raise SignatureError(f"the {log} audit log does not verify at entry"
                             f" {result.first_bad_seq} ({result.reason}); no checkpoint signed")
    cp = sign_checkpoint(log, result.entries, result.head_hash, key)
    save_checkpoint(path, cp)
    return cp


def load_checkpoint(path: str | os.PathLike[str], key: PublicKey | str | os.PathLike[str], *,
                    log: str) -> Checkpoint:
    """Read a checkpoint file and check its signature with ``key`` (SignatureError if bad)."""
    try:
        data = json.loads(read_small(path, limit=1 << 16))
    except ValueError as exc:
        if isinstance(exc, InputError | ConfigurationError):
            raise
        raise SignatureError(f"checkpoint {path} is not JSON: {exc}") from None
    return Checkpoint.from_dict(data).verify(key, log=log)


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
                 head_hash: str, checkpoint: Checkpoint | None = None, start_seq: int = 0,
                 start_hash: str = GENESIS) -> AuditVerification:
    """Check a chain given, oldest first, ``(seq, prev_hash, stored_hash, recomputed_hash)``.

    ``recomputed_hash`` is :func:`chain_hash` of the entry's stored ``prev_hash`` and its stored
    fields; ``head_seq``/``head_hash`` are what the head row records (``0``/:data:`GENESIS` for
    an empty log). Detects edited, removed (middle and end), inserted and reordered entries.
    With a ``checkpoint`` (already signature-checked), also a log truncated below, wiped or
    recomputed since the checkpoint. ``start_seq``/``start_hash``: the entry the given links
    continue (a log whose older entries were rotated into sealed segments); ``entries``
    counts the links checked.
    """
    result = _verify_links(links, head_seq=head_seq, head_hash=head_hash, checkpoint=checkpoint,
                           start_seq=start_seq, start_hash=start_hash)
    if checkpoint is None or not result.ok:
        return result
    return AuditVerification(True, result.entries, result.head_hash, checkpoint=checkpoint)


def _verify_links(links: Iterable[tuple[int, str, str, str]], *, head_seq: int,
                  head_hash: str, checkpoint: Checkpoint | None, start_seq: int = 0,
                  start_hash: str = GENESIS) -> AuditVerification:
    prev, expected_seq, count = start_hash, start_seq + 1, 0
    anchored = checkpoint is None or checkpoint.seq < start_seq or (
        checkpoint.seq == start_seq and checkpoint.hash == start_hash)
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
        if checkpoint is not None and seq == checkpoint.seq:
            if stored != checkpoint.hash:
                return AuditVerification(
                    False, count, prev, seq,
                    f"entry {seq} differs from the signed checkpoint of {checkpoint.at}: the log"
                    " was rewritten (edited and recomputed) since")
            anchored = True
        prev, expected_seq, count = stored, expected_seq + 1, count + 1
    last = expected_seq - 1
    if not anchored and checkpoint is not None:
        return AuditVerification(
            False, count, prev, expected_seq,
            f"the log ends at entry {last} but the signed checkpoint of {checkpoint.at} covers"
            f" entry {checkpoint.seq}: entries were removed from the end or the log was wiped")
    if head_seq != last or head_hash != prev:
        return AuditVerification(False, count, prev, expected_seq,
                                 f"the log ends at entry {last} but the head records entry"
                                 f" {head_seq}: entries were removed from the end")
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


def verify_chain(session: Session, checkpoint: Checkpoint | None = None) -> AuditVerification:
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
    return verify_links(links, head_seq=head_seq, head_hash=head_hash, checkpoint=checkpoint)
