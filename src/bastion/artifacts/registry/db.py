"""Registry metadata: SQLAlchemy 2 tables and the engine (SQLite by default, PostgreSQL by URL).

Write transactions are serialised: on SQLite every transaction begins with ``BEGIN IMMEDIATE``
(one writer at a time across threads and processes, waiting up to ``busy_timeout``); on
PostgreSQL a write takes a row lock on the single ``audit_head`` row (see
:mod:`bastion.artifacts.registry.audit`). Version numbers are also protected by a unique
constraint, so a conflict is detected even without the lock.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bastion.errors import ConfigurationError

__all__ = [
    "AliasEvent",
    "AliasRow",
    "Assessment",
    "AuditEntry",
    "AuditHead",
    "Base",
    "ModelRow",
    "Permission",
    "VersionRow",
    "make_engine",
    "utcnow",
]


def utcnow() -> dt.datetime:
    """The current time in UTC, second resolution kept to microseconds."""
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    pass


class ModelRow(Base):
    __tablename__ = "bastion_models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    created_by: Mapped[str] = mapped_column(String(200), nullable=False)


class VersionRow(Base):
    __tablename__ = "bastion_versions"
    __table_args__ = (UniqueConstraint("model_id", "version", name="uq_model_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("bastion_models.id"), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    digest: Mapped[str] = mapped_column(String(64), nullable=False)
    kind: Mapped[str] = mapped_column(String(8), nullable=False)  # "file" | "dir"
    source_name: Mapped[str] = mapped_column(String(500), nullable=False)
    files: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)  # name -> {sha256,size}
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    signature: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    signature_status: Mapped[str] = mapped_column(String(16), nullable=False)
    signer_hint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    scan_verdict: Mapped[str] = mapped_column(String(16), nullable=False)
    scan_details: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    lineage: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    created_by: Mapped[str] = mapped_column(String(200), nullable=False)


class Assessment(Base):
    __tablename__ = "bastion_assessments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("bastion_versions.id"), nullable=False)
    report: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    digest: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    created_by: Mapped[str] = mapped_column(String(200), nullable=False)


class AuditRow(Base):
    """A signed audit (``bastion audit --sign-key``) kept with the version it was checked for."""

    __tablename__ = "bastion_audits"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("bastion_versions.id"), nullable=False)
    report: Mapped[str] = mapped_column(Text, nullable=False)  # the exact signed bytes (UTF-8)
    attestation: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    report_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    audited_at: Mapped[str] = mapped_column(String(40), nullable=False)
    catalogue_version: Mapped[str] = mapped_column(Text, nullable=False)
    verdict: Mapped[str] = mapped_column(String(20), nullable=False)
    key_hint: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    created_by: Mapped[str] = mapped_column(String(200), nullable=False)


class AliasRow(Base):
    __tablename__ = "bastion_aliases"
    __table_args__ = (UniqueConstraint("model_id", "alias", name="uq_model_alias"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("bastion_models.id"), nullable=False)
    alias: Mapped[str] = mapped_column(String(100), nullable=False)
    version_id: Mapped[int] = mapped_column(ForeignKey("bastion_versions.id"), nullable=False)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class AliasEvent(Base):
    """Promotions and rollbacks of an alias, in order: the stack that rollback pops."""

    __tablename__ = "bastion_alias_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("bastion_models.id"), nullable=False)
    alias: Mapped[str] = mapped_column(String(100), nullable=False)
    action: Mapped[str] = mapped_column(String(16), nullable=False)  # promote | rollback
    version_id: Mapped[int] = mapped_column(ForeignKey("bastion_versions.id"), nullable=False)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    actor: Mapped[str] = mapped_column(String(200), nullable=False)


class Permission(Base):
    __tablename__ = "bastion_permissions"
    __table_args__ = (UniqueConstraint("model", "identity", name="uq_model_identity"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(200), nullable=False)  # a model name or "*"
    identity: Mapped[str] = mapped_column(String(200), nullable=False)
    level: Mapped[str] = mapped_column(String(16), nullable=False)
    granted_by: Mapped[str] = mapped_column(String(200), nullable=False)
    granted_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class AuditEntry(Base):
    __tablename__ = "bastion_audit_log"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[str] = mapped_column(String(40), nullable=False)
    actor: Mapped[str] = mapped_column(String(200), nullable=False)
    action: Mapped[str] = mapped_column(String(40), nullable=False)
    model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)
    details: Mapped[str] = mapped_column(Text, nullable=False)  # canonical JSON
    prev_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False)


class AuditHead(Base):
    """One row: the sequence number and hash of the newest audit entry (also the write lock)."""

    __tablename__ = "bastion_audit_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, nullable=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False)


def make_engine(url: str, *, busy_timeout: float = 60.0) -> Engine:
    """Create the engine for ``url`` (``sqlite:///path`` or ``postgresql+psycopg://...``)."""
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": busy_timeout,
                                                      "check_same_thread": False})
            _sqlite_begin_immediate(engine)
        elif url.startswith(("postgresql", "postgres")):
            if url.startswith("postgres://"):
                url = "postgresql+psycopg://" + url[len("postgres://"):]
            elif url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url[len("postgresql://"):]
            engine = create_engine(url, pool_pre_ping=True)
        else:
            raise ConfigurationError(
                f"metadata URL {url!r} is not supported; use sqlite:///PATH or"
                " postgresql+psycopg://USER@HOST:PORT/DB"
            )
    except (ArgumentError, NoSuchModuleError) as exc:
        raise ConfigurationError(f"bad metadata URL {url!r}: {exc}") from exc
    return engine


def _sqlite_begin_immediate(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let us emit BEGIN ourselves
        cur = dbapi_connection.cursor()
        try:
            cur.execute("PRAGMA journal_mode=WAL")
        except Exception:  # noqa: S110 - WAL is an optimisation only
            pass
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
