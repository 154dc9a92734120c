"""CLI: ``bastion keys ...``, ``bastion users ...`` and ``bastion audit-log ...``.

Every command takes ``--db URL`` (default ``$BASTION_ACCESS_DB`` or
``sqlite:///bastion-access.db``; PostgreSQL as ``postgresql+psycopg://USER@HOST/DB``) and
``--actor NAME`` (default ``$BASTION_ACTOR`` or the login name), which is recorded in the audit
log. These commands are the administration plane: whoever can open the database can change
it, so they record the actor but do not check its grants.

Exit codes: 0 success, 1 an audit log that does not verify, 2 bad input or a refused change.
"""

from __future__ import annotations

import getpass
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from bastion.cli._common import console, fail, handle_errors, report_chain
from bastion.errors import ConfigurationError

if TYPE_CHECKING:
    from bastion.access import AccessStore

__all__ = ["register"]

DEFAULT_DB = "sqlite:///bastion-access.db"
#: the name under which the access log is checkpointed
ACCESS_LOG_NAME = "bastion.access"

keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
users_app = typer.Typer(help="Users, service accounts and their roles.", no_args_is_help=True)
audit_app = typer.Typer(help="Verify and read the access audit log.", no_args_is_help=True)

_DB = typer.Option(None, "--db", help="Access database URL (default: $BASTION_ACCESS_DB or "
                   f"{DEFAULT_DB}).")
_ACTOR = typer.Option(None, "--actor", help="Who is acting, recorded in the audit log "
                      "(default: $BASTION_ACTOR or the login name).")


def _url(db: str | None) -> str:
    return db or os.environ.get("BASTION_ACCESS_DB") or DEFAULT_DB


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    env = os.environ.get("BASTION_ACTOR")
    if env:
        return env
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        raise fail("cannot tell who you are: pass --actor or set BASTION_ACTOR") from None


def _existing(db: str | None) -> str:
    """The URL for a read-only command: a SQLite file must already exist (no typo'd path
    silently verifying an empty log)."""
    url = _url(db)
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if str(path) not in ("", ":memory:") and not path.exists():
            raise fail(f"no access database at {path}; pass --db or set BASTION_ACCESS_DB")
    return url


def _store(db: str | None) -> AccessStore:
    from bastion.access import AccessStore

    return AccessStore(_url(db), cache_ttl=0, audit_interval=60.0)


def _when(value: object) -> str:
    return "never" if value is None else str(value)[:16].replace("T", " ")


# ---------------------------------------------------------------------- keys


@keys_app.command("create")
@handle_errors
def keys_create_cmd(
    owner: str = typer.Argument(..., help="Identity the key acts as."),
    scope: list[str] | None = typer.Option(None, "--scope", help="Action the key may do "
                                           "(repeatable; default predict)."),
    resource: list[str] | None = typer.Option(None, "--resource", help="model:NAME, model:*, "
                                              "dataset:NAME or * (repeatable; default *)."),
    expires_in: str = typer.Option("90d", "--expires-in", help="Lifetime: 30d, 12h, 2w or "
                                   "'never'."),
    label: str = typer.Option("", "--label", help="A note shown by `keys list`."),
    db: str | None = _DB,
    actor: str | None = _ACTOR,
) -> None:
    """Issue an API key; its token is printed once and never stored."""
    from bastion.access import parse_duration

    lifetime = parse_duration(expires_in)
    store = _store(db)
    try:
        key = store.create_key(owner, scopes=scope or ["predict"], resources=resource or ["*"],
                               expires_in=lifetime, label=label, actor=_actor(actor))
    finally:
        store.close()
    console.print(f"key id:  {key.key_id}\nexpires: {_when(key.expires_at)}", highlight=False)
    console.print("token (shown once, store it now):", style="bold", highlight=False)
    typer.echo(key.token)


@keys_app.command("list")
@handle_errors
def keys_list_cmd(
    owner: str | None = typer.Option(None, "--owner", help="Only this identity's keys."),
    db: str | None = _DB,
) -> None:
    """List keys (never their secrets)."""
    store = _store(db)
    try:
        keys = store.list_keys(owner)
    finally:
        store.close()
    table = Table("key id", "owner", "scopes", "resources", "label", "expires", "status")
    for i in (0, 1, 5, 6):
        table.columns[i].no_wrap = True
    for k in keys:
        table.add_row(k.key_id, k.owner, ",".join(k.scopes), ",".join(k.resources), k.label,
                      _when(k.expires_at), k.status())
    console.print(table)
    if not keys:
        console.print("no keys", style="dim")


@keys_app.command("revoke")
@handle_errors
def keys_revoke_cmd(
    key_id: str = typer.Argument(..., help="The key id shown by `keys list`."),
    db: str | None = _DB,
    actor: str | None = _ACTOR,
) -> None:
    """Revoke a key (gateways stop accepting it within their cache TTL, 5 s by default)."""
    store = _store(db)
    try:
        store.revoke_key(key_id, actor=_actor(actor))
    finally:
        store.close()
    typer.echo(f"revoked key {key_id}")


# ---------------------------------------------------------------------- users


@users_app.command("add")
@handle_errors
def users_add_cmd(
    name: str = typer.Argument(..., help="Identity name."),
    service: bool = typer.Option(False, "--service", help="A service account, not a person."),
    db: str | None = _DB,
    actor: str | None = _ACTOR,
) -> None:
    """Add a user (or with --service a service account)."""
    store = _store(db)
    try:
        store.add_identity(name, kind="service" if service else "user", actor=_actor(actor))
    finally:
        store.close()
    typer.echo(f"added {'service account' if service else 'user'} {name}")


@users_app.command("grant")
@handle_errors
def users_grant_cmd(
    name: str = typer.Argument(..., help="Identity name."),
    role: str = typer.Argument(..., help="admin, maintainer, data_scientist, auditor or "
                               "consumer."),
    resource: str = typer.Option("*", "--resource", help="model:NAME, model:*, dataset:NAME, "
                                 "dataset:* or *."),
    db: str | None = _DB,
    actor: str | None = _ACTOR,
) -> None:
    """Give an identity a role on a resource."""
    store = _store(db)
    try:
        store.grant(name, role, resource, actor=_actor(actor))
    finally:
        store.close()
    typer.echo(f"granted {role} on {resource} to {name}")


@users_app.command("revoke")
@handle_errors
def users_revoke_cmd(
    name: str = typer.Argument(..., help="Identity name."),
    role: str = typer.Argument(..., help="The role to take away."),
    resource: str = typer.Option("*", "--resource", help="The resource of the grant."),
    db: str | None = _DB,
    actor: str | None = _ACTOR,
) -> None:
    """Take a role on a resource away from an identity."""
    store = _store(db)
    try:
        store.revoke_grant(name, role, resource, actor=_actor(actor))
    finally:
        store.close()
    typer.echo(f"revoked {role} on {resource} from {name}")


@users_app.command("remove")
@handle_errors
def users_remove_cmd(
    name: str = typer.Argument(..., help="Identity name."),
    db: str | None = _DB,
    actor: str | None = _ACTOR,
) -> None:
    """Remove an identity, its grants, and revoke its keys."""
    store = _store(db)
    try:
        store.remove_identity(name, actor=_actor(actor))
    finally:
        store.close()
    typer.echo(f"removed {name}")


@users_app.command("list")
@handle_errors
def users_list_cmd(db: str | None = _DB) -> None:
    """List identities and their grants."""
    store = _store(db)
    try:
        people = store.list_identities()
    finally:
        store.close()
    table = Table("name", "kind", "grants", "created by")
    for p in people:
        grants = ", ".join(f"{g.role.value} on {g.resource}" for g in p.grants) or "-"
        table.add_row(p.name, p.kind, grants, p.created_by)
    console.print(table)
    if not people:
        console.print("no identities", style="dim")


# ---------------------------------------------------------------------- audit log


@audit_app.command("verify")
@handle_errors
def audit_verify_cmd(
    db: str | None = _DB,
    checkpoint: Path | None = typer.Option(None, envvar="BASTION_ACCESS_CHECKPOINT",
                                           help="Latest signed checkpoint of the log."),
    checkpoint_key: Path | None = typer.Option(None, envvar="BASTION_ACCESS_CHECKPOINT_KEY",
                                               help="Public key of the checkpoints."),
    archive: Path | None = typer.Option(None, "--archive", help="Folder of the sealed "
                                        "segments (audit-log rotate): re-verify them too."),
) -> None:
    """Recompute the hash chain (across sealed segments, against the signed checkpoint if
    given); exit 1 naming the first bad entry."""
    from bastion.access import AuditLog
    from bastion.artifacts.registry.audit import load_checkpoint

    if (checkpoint is None) != (checkpoint_key is None):
        raise ConfigurationError("give both --checkpoint and --checkpoint-key, or neither")
    cp = (load_checkpoint(checkpoint, checkpoint_key, log=ACCESS_LOG_NAME)
          if checkpoint is not None and checkpoint_key is not None else None)
    log = AuditLog(_existing(db))
    try:
        result = log.verify(cp, archive=archive)
    finally:
        log.close()
    report_chain(result)


@audit_app.command("checkpoint")
@handle_errors
def audit_checkpoint_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint file, kept outside the DB."),
    key: Path = typer.Option(..., "--key", "-k", help="Private key the DB writer does not hold."),
    every: float = typer.Option(0.0, "--every", help="Repeat every SECONDS until interrupted."),
    password_env: str | None = typer.Option(None, help="Variable holding the key's password."),
    db: str | None = _DB,
) -> None:
    """Sign the access log's head into a checkpoint (see ``registry audit-log checkpoint``)."""
    from bastion.access import AuditLog
    from bastion.cli.registry import checkpoint_loop

    log = AuditLog(_existing(db))
    try:
        checkpoint_loop(out, key, password_env, every, ACCESS_LOG_NAME, log.verify)
    finally:
        log.close()


@audit_app.command("rotate")
@handle_errors
def audit_rotate_cmd(
    archive: Path = typer.Option(..., "--archive", help="Folder for the sealed segment files."),
    keep: int = typer.Option(..., "--keep", min=0, help="Newest entries to keep in the "
                             "database; older ones move to a sealed segment."),
    db: str | None = _DB,
    actor: str | None = _ACTOR,
) -> None:
    """Retention: move old entries into a sealed segment file; the chain still verifies."""
    from bastion.access import AuditLog

    log = AuditLog(_existing(db))
    try:
        seg = log.rotate(archive, keep=keep, actor=_actor(actor))
    finally:
        log.close()
    if seg is None:
        typer.echo(f"nothing to rotate: at most {keep} entries in the database")
        return
    typer.echo(f"sealed entries {seg.first_seq}..{seg.last_seq} into {archive / seg.file} "
               f"(sha256 {seg.sha256})")


@audit_app.command("show")
@handle_errors
def audit_show_cmd(
    limit: int = typer.Option(50, "--limit", min=0, help="Newest entries to show."),
    db: str | None = _DB,
) -> None:
    """Print the newest audit entries as JSON lines, oldest first."""
    from bastion.access import AuditLog

    log = AuditLog(_existing(db))
    try:
        entries = log.entries(limit=limit)
    finally:
        log.close()
    for e in entries:
        typer.echo(json.dumps({"seq": e.seq, "at": e.at, "actor": e.actor, "action": e.action,
                               "resource": e.resource, "outcome": e.outcome,
                               "details": e.details, "hash": e.hash}, sort_keys=True))


def register(app: typer.Typer) -> None:
    """Add ``keys``, ``users`` and ``audit-log``."""
    app.add_typer(keys_app, name="keys")
    app.add_typer(users_app, name="users")
    app.add_typer(audit_app, name="audit-log")
