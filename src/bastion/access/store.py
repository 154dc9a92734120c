"""The access store: identities, role grants, API keys, and every decision audited.

:class:`AccessStore` keeps users and service accounts, their grants (a :class:`Role` on a
resource) and their API keys in a database (SQLite by default, PostgreSQL by URL), together
with the hash-chained :class:`~bastion.access.audit.AuditLog`.

Two planes:

* **Administration** (``add_identity``, ``grant``, ``revoke_grant``, ``create_key``,
  ``revoke_key``, ``remove_identity``) is trusted: whoever can open the database can change it,
  so these methods record ``actor`` but do not check it -- a service exposing them must first
  call ``authorise(principal, "manage_keys" | "manage_users", "*")``. Each change and its audit
  entry commit in one transaction; a refused change is audited too.
* **Decisions** (``authenticate``, ``authorise``) are the hot path. They read through an
  in-process cache with a time to live of ``cache_ttl`` seconds (keyed by the SHA-256 of the
  token, and by identity for grants) and queue their audit entries on a background
  :class:`~bastion.access.audit.AuditWriter` instead of committing per call. Consequence:
  **a revoked key, a revoked grant or a removed identity keeps working for up to
  ``cache_ttl`` seconds in other processes** (in this process ``revoke_key`` and the grant
  changes drop the cached entries at once). Expiry is exact: it is checked on every call.
  ``cache_ttl=0`` disables the cache.

A key's effective rights are the intersection of its scopes (actions and resources) and its
owner's grants *at the time of use*; ``create_key`` also refuses a key whose scopes no grant of
the owner allows.

>>> import os, tempfile
>>> db = "sqlite:///" + os.path.join(tempfile.mkdtemp(), "access.db")
>>> store = AccessStore(db, cache_ttl=0)
>>> store.add_identity("fraud-svc", kind="service", actor="root")
>>> store.grant("fraud-svc", "consumer", "model:fraud", actor="root")
>>> key = store.create_key("fraud-svc", resources=["model:fraud"], actor="root")
>>> who = store.authenticate(key.token)
>>> store.authorise(who, "predict", "model:fraud")   # allowed: returns None
>>> store.authorise(who, "predict", "model:churn")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
bastion.errors.AccessDenied: fraud-svc may not predict on model:churn: key ... only model:fraud
>>> store.close()
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from bastion.access.audit import AuditLog, AuditWriter
from bastion.access.db import ApiKeyRow, GrantRow, IdentityRow
from bastion.access.keys import (
    IssuedKey,
    KeyInfo,
    hash_secret,
    new_token,
    parse_token,
    secret_matches,
)
from bastion.access.roles import (
    ACTIONS,
    ROLE_ACTIONS,
    Role,
    check_action,
    check_identity_name,
    check_resource,
    covers,
    overlaps,
    parse_role,
)
from bastion.errors import AccessDenied, AuthenticationError, ConfigurationError, InputError

__all__ = ["AccessStore", "GrantInfo", "IdentityInfo", "Principal"]

_KINDS = ("user", "service")
_NO_HASH = "0" * 64  # compared against when the key id is unknown


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the identity, the key used (if any) and the key's scopes."""

    name: str
    kind: str
    key_id: str | None
    scopes: frozenset[str]
    resources: frozenset[str]


@dataclass(frozen=True)
class GrantInfo:
    """One grant: ``role`` on ``resource``."""

    role: Role
    resource: str
    granted_by: str
    granted_at: dt.datetime


@dataclass(frozen=True)
class IdentityInfo:
    """An identity and its grants, as listed by :meth:`AccessStore.list_identities`."""

    name: str
    kind: str
    created_at: dt.datetime
    created_by: str
    grants: tuple[GrantInfo, ...]


def _utc(value: dt.datetime) -> dt.datetime:
    """SQLite returns naive datetimes: they were stored in UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _utc_opt(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else _utc(value)


def _names(values: Sequence[str] | str, what: str) -> tuple[str, ...]:
    if isinstance(values, str):
        values = [values]
    out = tuple(dict.fromkeys(values))
    if not out:
        raise ConfigurationError(f"a key needs at least one {what}")
    return out


class AccessStore:
    """Identities, grants, API keys and the audit log in the database at ``url``.

    ``url`` is ``sqlite:///PATH`` (a file: in-memory SQLite is refused, because the audit
    writer runs in another thread) or ``postgresql+psycopg://USER@HOST:PORT/DB``.

    ``cache_ttl`` (seconds) bounds how long a revocation may take to reach this process (see
    the module docstring). ``audit_decisions`` says which authentication and authorisation
    decisions this store appends to the audit log: ``"all"`` (default), ``"denied"`` (failed
    authentications and denied authorisations only), or ``"none"`` (for a gateway that writes
    one entry of its own per request, naming the outcome and the reason). Administrative
    actions (keys, identities, grants) are always audited.
    ``audit_batch`` and ``audit_interval`` configure the background audit writer;
    ``audit_fsync`` syncs every SQLite commit to disk (see :class:`AuditLog`).
    """

    def __init__(self, url: str = "sqlite:///bastion-access.db", *, cache_ttl: float = 5.0,
                 audit_decisions: str = "all", audit_batch: int = 500,
                 audit_interval: float = 0.2, max_cached: int = 10_000,
                 audit_fsync: bool = False) -> None:
        if not cache_ttl >= 0:
            raise ConfigurationError(f"cache_ttl must be >= 0 seconds, got {cache_ttl}")
        if max_cached < 1:
            raise ConfigurationError(f"max_cached must be >= 1, got {max_cached}")
        self.cache_ttl = float(cache_ttl)
        if audit_decisions not in ("all", "denied", "none"):
            raise ConfigurationError(
                f"audit_decisions must be 'all', 'denied' or 'none', got {audit_decisions!r}"
            )
        self.audit_decisions = audit_decisions
        self.max_cached = max_cached
        self._audit = AuditLog(url, fsync=audit_fsync)
        try:
            self._writer = AuditWriter(self._audit, max_batch=audit_batch,
                                       interval=audit_interval)
        except ConfigurationError:
            self._audit.close()
            raise
        self._keys: dict[bytes, tuple[Principal, float, float | None]] = {}
        self._grants: dict[str, tuple[tuple[tuple[Role, str], ...], float]] = {}
        self._cache_lock = threading.Lock()
        self._closed = False

    # ------------------------------------------------------------------ plumbing

    @property
    def audit(self) -> AuditLog:
        """The hash-chained audit log in the same database."""
        return self._audit

    @property
    def engine(self) -> Engine:
        return self._audit.engine

    def flush_audit(self) -> None:
        """Write the queued decision entries now (they are otherwise written in batches)."""
        self._writer.flush()

    def close(self) -> None:
        """Write the queued audit entries and release the database (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._writer.close()
        finally:
            self._audit.close()

    def __enter__(self) -> AccessStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _decision(self, actor: str, action: str, resource: str | None, ok: bool,
                  outcome: str, details: Mapping[str, Any]) -> None:
        if self.audit_decisions == "none" or (ok and self.audit_decisions == "denied"):
            return
        self._writer.submit(actor=actor, action=action, resource=resource, outcome=outcome,
                            details=dict(details))

    def _refused(self, actor: str, action: str, resource: str | None,
                 exc: Exception, details: Mapping[str, Any]) -> None:
        self._writer.flush()
        self._audit.append(actor=actor, action=action, resource=resource, outcome="refused",
                           details={**details, "reason": str(exc)})

    @contextlib.contextmanager
    def _admin_tx(self) -> Iterator[Session]:
        """An administrative write; queued decisions are written first, so that the log
        keeps this process's events in order."""
        self._writer.flush()
        with self._audit.transaction() as s:
            yield s

    def _identity(self, s: Session, name: str) -> IdentityRow:
        row = s.get(IdentityRow, name)
        if row is None:
            raise ConfigurationError(
                f"unknown identity {name!r}; add it first (`bastion users add {name}`)")
        return row

    def _drop_cached(self, *, owner: str | None = None, key_id: str | None = None) -> None:
        with self._cache_lock:
            if owner is not None:
                self._grants.pop(owner, None)
            for digest, (p, _, _) in list(self._keys.items()):
                if p.key_id == key_id or (owner is not None and p.name == owner):
                    self._keys.pop(digest, None)

    # ------------------------------------------------------------------ identities

    def add_identity(self, name: str, *, kind: str = "user", actor: str) -> None:
        """Add a user or a service account (``kind``: ``"user"`` or ``"service"``)."""
        details = {"name": name, "kind": kind}
        try:
            check_identity_name(name)
            if kind not in _KINDS:
                raise ConfigurationError(f"kind must be 'user' or 'service', got {kind!r}")
            with self._admin_tx() as s:
                if s.get(IdentityRow, name) is not None:
                    raise ConfigurationError(f"identity {name!r} already exists")
                s.add(IdentityRow(name=name, kind=kind, created_at=dt.datetime.now(dt.UTC),
                                  created_by=actor))
                self._audit.record(s, [{"actor": actor, "action": "add_identity",
                                        "outcome": "ok", "details": details}])
        except ConfigurationError as exc:
            self._refused(actor, "add_identity", None, exc, details)
            raise

    def remove_identity(self, name: str, *, actor: str) -> None:
        """Remove an identity, its grants, and revoke all its keys."""
        with self._admin_tx() as s:
            self._identity(s, name)
            now = dt.datetime.now(dt.UTC)
            keys = s.execute(select(ApiKeyRow).where(ApiKeyRow.owner == name,
                                                     ApiKeyRow.revoked_at.is_(None))).scalars()
            revoked = []
            for k in keys:
                k.revoked_at, k.revoked_by = now, actor
                revoked.append(k.key_id)
            s.execute(delete(GrantRow).where(GrantRow.identity == name))
            s.execute(delete(IdentityRow).where(IdentityRow.name == name))
            self._audit.record(s, [{"actor": actor, "action": "remove_identity",
                                    "outcome": "ok",
                                    "details": {"name": name, "revoked_keys": revoked}}])
        self._drop_cached(owner=name)

    def list_identities(self) -> list[IdentityInfo]:
        """Every identity with its grants, by name."""
        with self._audit.reading() as s:
            rows = s.execute(select(IdentityRow).order_by(IdentityRow.name)).scalars().all()
            grants = s.execute(select(GrantRow).order_by(GrantRow.id)).scalars().all()
        by: dict[str, list[GrantInfo]] = {}
        for g in grants:
            by.setdefault(g.identity, []).append(
                GrantInfo(Role(g.role), g.resource, g.granted_by, _utc(g.granted_at)))
        return [IdentityInfo(r.name, r.kind, _utc(r.created_at), r.created_by,
                             tuple(by.get(r.name, ()))) for r in rows]

    # ------------------------------------------------------------------ grants

    def grant(self, name: str, role: Role | str, resource: str = "*", *, actor: str) -> None:
        """Give ``name`` the ``role`` on ``resource`` (idempotent)."""
        details = {"name": name, "role": str(role)}
        try:
            r = parse_role(role)
            check_resource(resource)
            with self._admin_tx() as s:
                self._identity(s, name)
                exists = s.execute(select(GrantRow).where(
                    GrantRow.identity == name, GrantRow.role == r.value,
                    GrantRow.resource == resource)).scalar_one_or_none()
                if exists is None:
                    s.add(GrantRow(identity=name, role=r.value, resource=resource,
                                   granted_at=dt.datetime.now(dt.UTC), granted_by=actor))
                self._audit.record(s, [{"actor": actor, "action": "grant", "resource": resource,
                                        "outcome": "ok" if exists is None else "unchanged",
                                        "details": details}])
        except ConfigurationError as exc:
            self._refused(actor, "grant", resource if isinstance(resource, str) else None,
                          exc, details)
            raise
        self._drop_cached(owner=name)

    def revoke_grant(self, name: str, role: Role | str, resource: str = "*", *,
                     actor: str) -> None:
        """Take the ``role`` on ``resource`` away from ``name``."""
        details = {"name": name, "role": str(role)}
        try:
            r = parse_role(role)
            check_resource(resource)
            with self._admin_tx() as s:
                self._identity(s, name)
                gone = s.execute(delete(GrantRow).where(
                    GrantRow.identity == name, GrantRow.role == r.value,
                    GrantRow.resource == resource))
                if not getattr(gone, "rowcount", 0):
                    raise ConfigurationError(
                        f"{name!r} has no grant {r.value} on {resource!r};"
                        " see `bastion users list`")
                self._audit.record(s, [{"actor": actor, "action": "revoke_grant",
                                        "resource": resource, "outcome": "ok",
                                        "details": details}])
        except ConfigurationError as exc:
            self._refused(actor, "revoke_grant", resource if isinstance(resource, str) else None,
                          exc, details)
            raise
        self._drop_cached(owner=name)

    def _load_grants(self, name: str) -> tuple[tuple[Role, str], ...]:
        now = time.monotonic()
        hit = self._grants.get(name)
        if hit is not None and hit[1] > now:
            return hit[0]
        with self._audit.reading() as s:
            rows = s.execute(select(GrantRow.role, GrantRow.resource)
                             .where(GrantRow.identity == name)).all()
        grants = tuple((Role(role), res) for role, res in rows)
        if self.cache_ttl > 0:
            with self._cache_lock:
                if len(self._grants) >= self.max_cached:
                    self._grants.clear()
                self._grants[name] = (grants, now + self.cache_ttl)
        return grants

    # ------------------------------------------------------------------ keys

    def create_key(self, owner: str, *, scopes: Sequence[str] = ("predict",),
                   resources: Sequence[str] = ("*",),
                   expires_in: dt.timedelta | None = dt.timedelta(days=90), label: str = "",
                   actor: str) -> IssuedKey:
        """Issue an API key for ``owner``; its token is returned once and never stored.

        ``scopes`` are actions, ``resources`` resource patterns; each scope must be allowed by
        some grant of the owner, and each resource must overlap a grant that allows one of the
        scopes (AccessDenied otherwise). ``expires_in=None`` makes a key that never expires.
        """
        details: dict[str, Any] = {"owner": owner, "scopes": list(scopes)
                                   if not isinstance(scopes, str) else [scopes],
                                   "resources": list(resources)
                                   if not isinstance(resources, str) else [resources],
                                   "label": label}
        try:
            scope_t = tuple(check_action(a) for a in _names(scopes, "scope"))
            res_t = tuple(check_resource(r) for r in _names(resources, "resource"))
            if expires_in is not None and expires_in <= dt.timedelta(0):
                raise ConfigurationError(f"expires_in must be positive, got {expires_in}")
            if not isinstance(label, str) or len(label) > 200:
                raise ConfigurationError("label must be a string of at most 200 characters")
            now = dt.datetime.now(dt.UTC)
            expires_at = None if expires_in is None else now + expires_in
            key_id, secret, token = new_token()
            with self._admin_tx() as s:
                self._identity(s, owner)
                grants = [(Role(g.role), g.resource) for g in s.execute(
                    select(GrantRow).where(GrantRow.identity == owner)).scalars()]
                for a in scope_t:
                    if not any(a in ROLE_ACTIONS[role] for role, _ in grants):
                        raise AccessDenied(f"a key for {owner!r} cannot have scope {a!r}: no"
                                           f" grant of {owner!r} allows {a!r}")
                for r in res_t:
                    if not any(overlaps(g, r) and ROLE_ACTIONS[role] & set(scope_t)
                               for role, g in grants):
                        raise AccessDenied(
                            f"a key for {owner!r} cannot cover resource {r!r}: no grant of"
                            f" {owner!r} allows {', '.join(scope_t)} on it")
                s.add(ApiKeyRow(key_id=key_id, owner=owner,
                                secret_hash=hash_secret(key_id, secret), scopes=list(scope_t),
                                resources=list(res_t), label=label, created_at=now,
                                created_by=actor, expires_at=expires_at))
                self._audit.record(s, [{"actor": actor, "action": "create_key", "outcome": "ok",
                                        "details": {**details, "key_id": key_id,
                                                    "expires_at": expires_at}}])
        except (ConfigurationError, AccessDenied) as exc:
            self._refused(actor, "create_key", None, exc, details)
            raise
        return IssuedKey(key_id=key_id, token=token, expires_at=expires_at)

    def revoke_key(self, key_id: str, *, actor: str) -> None:
        """Revoke a key (idempotent for an already revoked key)."""
        try:
            with self._admin_tx() as s:
                row = s.get(ApiKeyRow, key_id) if isinstance(key_id, str) else None
                if row is None:
                    raise ConfigurationError(
                        f"unknown key id {key_id!r}; see `bastion keys list`")
                already = row.revoked_at is not None
                if not already:
                    row.revoked_at, row.revoked_by = dt.datetime.now(dt.UTC), actor
                self._audit.record(s, [{"actor": actor, "action": "revoke_key",
                                        "outcome": "unchanged" if already else "ok",
                                        "details": {"key_id": key_id, "owner": row.owner}}])
        except ConfigurationError as exc:
            self._refused(actor, "revoke_key", None, exc, {"key_id": str(key_id)[:40]})
            raise
        self._drop_cached(key_id=key_id)

    def list_keys(self, owner: str | None = None) -> list[KeyInfo]:
        """Keys (of ``owner``, or all), oldest first; never their secrets or hashes."""
        q = select(ApiKeyRow).order_by(ApiKeyRow.created_at, ApiKeyRow.key_id)
        if owner is not None:
            q = q.where(ApiKeyRow.owner == owner)
        with self._audit.reading() as s:
            rows = s.execute(q).scalars().all()
        return [KeyInfo(key_id=r.key_id, owner=r.owner, scopes=tuple(r.scopes),
                        resources=tuple(r.resources), label=r.label,
                        created_at=_utc(r.created_at),
                        created_by=r.created_by, expires_at=_utc_opt(r.expires_at),
                        revoked_at=_utc_opt(r.revoked_at)) for r in rows]

    # ------------------------------------------------------------------ decisions

    def authenticate(self, token: str | None) -> Principal:
        """The :class:`Principal` of an API key; AuthenticationError if none, malformed,
        unknown, wrong, revoked or expired (the message never contains the secret)."""
        usable = isinstance(token, str) and len(token) <= 200  # don't hash a huge header
        digest = hashlib.sha256(token.encode()).digest() if usable else b""  # type: ignore[union-attr]
        hit = self._keys.get(digest)
        if hit is not None and hit[1] > time.monotonic() and (hit[2] is None
                                                               or hit[2] > time.time()):
            p = hit[0]
            self._decision(p.name, "authenticate", None, True, "ok", {"key_id": p.key_id})
            return p
        key_id: str | None = None
        who = "anonymous"  # the owner, once the secret has matched
        try:
            key_id, secret = parse_token(token)
            with self._audit.reading() as s:
                row = s.get(ApiKeyRow, key_id)
                stored = row.secret_hash if row is not None else _NO_HASH  # same work either way
                if not secret_matches(key_id, secret, stored) or row is None:
                    raise AuthenticationError(f"unknown or wrong API key bst_{key_id}_…")
                who = row.owner
                if row.revoked_at is not None:
                    raise AuthenticationError(f"API key {key_id} was revoked")
                expires = _utc_opt(row.expires_at)
                if expires is not None and expires <= dt.datetime.now(dt.UTC):
                    raise AuthenticationError(
                        f"API key {key_id} expired at {expires.isoformat(timespec='seconds')};"
                        " ask for a new key")
                owner = s.get(IdentityRow, row.owner)
                if owner is None:
                    raise AuthenticationError(f"the owner of API key {key_id} no longer exists")
                p = Principal(name=row.owner, kind=owner.kind, key_id=key_id,
                              scopes=frozenset(row.scopes), resources=frozenset(row.resources))
        except AuthenticationError as exc:
            self._decision(who, "authenticate", None, False, "fail",
                           {"key_id": key_id, "reason": str(exc)})
            raise
        if self.cache_ttl > 0:
            with self._cache_lock:
                if len(self._keys) >= self.max_cached:
                    self._keys.clear()
                self._keys[digest] = (p, time.monotonic() + self.cache_ttl,
                                      None if expires is None else expires.timestamp())
        self._decision(p.name, "authenticate", None, True, "ok", {"key_id": key_id})
        return p

    def principal(self, name: str) -> Principal:
        """A principal acting as ``name`` directly (no key: all actions its grants allow).

        For trusted callers such as the CLI; the identity must exist.
        """
        with self._audit.reading() as s:
            row = self._identity(s, name)
            return Principal(name=row.name, kind=row.kind, key_id=None, scopes=ACTIONS,
                             resources=frozenset({"*"}))

    def authorise(self, principal: Principal, action: str, resource: str) -> None:
        """Allow ``principal`` to ``action`` on ``resource``, or raise AccessDenied.

        Both the key's scopes and the owner's current grants must allow it. An unknown
        action is a ConfigurationError (a programming error); a malformed resource an
        InputError.
        """
        check_action(action)
        try:
            check_resource(resource)
        except ConfigurationError as exc:
            raise InputError(str(exc)) from None
        key = f"key {principal.key_id}" if principal.key_id else "the caller"
        reason = ""
        if action not in principal.scopes:
            reason = f"{key} is scoped to {', '.join(sorted(principal.scopes))} only"
        elif not any(covers(r, resource) for r in principal.resources):
            reason = f"{key} covers only {', '.join(sorted(principal.resources))}"
        elif not any(action in ROLE_ACTIONS[role] and covers(g, resource)
                     for role, g in self._load_grants(principal.name)):
            reason = f"no role of {principal.name!r} allows {action} on {resource}"
        details = {"key_id": principal.key_id}
        if reason:
            self._decision(principal.name, action, resource, False, "deny",
                           {**details, "reason": reason})
            raise AccessDenied(f"{principal.name} may not {action} on {resource}: {reason}")
        self._decision(principal.name, action, resource, True, "allow", details)
