"""Tables of the access store (all prefixed ``bastion_access_``) in their own metadata.

They can live in the same database as the registry's tables (different names, a separate
:class:`AccessBase`). The engine comes from :func:`bastion.artifacts.registry.db.make_engine`:
SQLite (``BEGIN IMMEDIATE`` serialises writers) by default, PostgreSQL by URL (writers of the
audit log serialise on a row lock of the single head row).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "AccessAuditEntry",
    "AccessAuditHead",
    "AccessAuditSegment",
    "AccessBase",
    "AccessCounterRow",
    "ApiKeyRow",
    "GrantRow",
    "IdentityRow",
]


class AccessBase(DeclarativeBase):
    pass


class IdentityRow(AccessBase):
    __tablename__ = "bastion_access_identities"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)  # user | service
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    created_by: Mapped[str] = mapped_column(String(200), nullable=False)


class GrantRow(AccessBase):
    __tablename__ = "bastion_access_grants"
    __table_args__ = (UniqueConstraint("identity", "role", "resource", name="uq_access_grant"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    identity: Mapped[str] = mapped_column(String(128), nullable=False, index=True)
    role: Mapped[str] = mapped_column(String(32), nullable=False)
    resource: Mapped[str] = mapped_column(String(200), nullable=False)
    granted_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    granted_by: Mapped[str] = mapped_column(String(200), nullable=False)


class ApiKeyRow(AccessBase):
    __tablename__ = "bastion_access_keys"
    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), nullable=False, index=True)
    secret_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    scopes: Mapped[list[Any]] = mapped_column(JSON, nullable=False)
    resources: Mapped[list[Any]] = mapped_column(JSON, nullable=False)
    label: Mapped[str] = mapped_column(String(200), nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    created_by: Mapped[str] = mapped_column(String(200), nullable=False)
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True),
                                                           nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True),
                                                           nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(200), nullable=True)


class AccessAuditEntry(AccessBase):
    __tablename__ = "bastion_access_audit_log"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[str] = mapped_column(String(40), nullable=False)
    actor: Mapped[str] = mapped_column(String(200), nullable=False)
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    resource: Mapped[str | None] = mapped_column(String(200), nullable=True)
    outcome: Mapped[str] = mapped_column(String(32), nullable=False)
    details: Mapped[str] = mapped_column(Text, nullable=False)  # canonical JSON
    prev_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False)


class AccessAuditHead(AccessBase):
    """One row: the newest audit entry's sequence number and hash (also the write lock)."""

    __tablename__ = "bastion_access_audit_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, nullable=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False)


class AccessCounterRow(AccessBase):
    """A named counter committed together with audit entries (lifetime query budgets)."""

    __tablename__ = "bastion_access_counters"
    name: Mapped[str] = mapped_column(String(250), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, nullable=False)


class AccessAuditSegment(AccessBase):
    """A sealed segment: audit entries ``first_seq..last_seq`` moved out of the live table
    into an archive file whose SHA-256 is ``sha256``; the live chain continues from
    ``last_hash``."""

    __tablename__ = "bastion_access_audit_segments"
    first_seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_seq: Mapped[int] = mapped_column(Integer, nullable=False)
    first_prev_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    last_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    file: Mapped[str] = mapped_column(String(300), nullable=False)
    sealed_at: Mapped[str] = mapped_column(String(40), nullable=False)
