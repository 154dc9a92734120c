"""CLI: ``bastion registry ...``, ``sign``/``verify``, ``encrypt``/``decrypt`` and ``keygen``.

Two modes:

* **Service mode** -- ``--registry-url`` / ``BASTION_REGISTRY_URL`` names a registry service
  (``bastion registry serve``) and ``BASTION_REGISTRY_TOKEN`` holds your API key: your identity
  is the key's owner, proven, and the service checks what you may do. Use this for a registry
  shared by several people.
* **Direct mode** (single user) -- the commands open the database themselves:
  ``--metadata-url`` / ``BASTION_REGISTRY_METADATA_URL`` (default SQLite under
  ``~/.bastion/registry``) and ``--storage-url`` / ``BASTION_REGISTRY_STORAGE_URL`` (default a
  local folder). Whoever can write the database is its administrator, so per-model permissions
  are bookkeeping, not protection. You act as your login name; the first login to use a new
  database is recorded as its administrator, and only an administrator *by the database's
  record* may act as someone else with ``--actor`` / ``BASTION_ACTOR``.

Other options: trusted public keys ``--trusted-key`` / ``BASTION_TRUSTED_KEYS``
(comma-separated paths); ``--kek-file`` / ``BASTION_REGISTRY_KEK_FILE`` stores pushed blobs
encrypted at rest; ``--checkpoint`` / ``BASTION_REGISTRY_CHECKPOINT`` and
``--checkpoint-key`` / ``BASTION_REGISTRY_CHECKPOINT_KEY`` anchor the audit log to the latest
signed checkpoint (written by ``registry audit-log checkpoint``).

Exit codes: 0 success, 1 a signature or audit log that does not verify, 2 an error or a refused
operation (failed gate, permission denied, unknown model).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Column, Table

from bastion.cli._common import console, fail, handle_errors, parse_kv, report_chain
from bastion.errors import ConfigurationError, InputError

__all__ = ["register"]


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _numbers(values: list[str] | None, what: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in parse_kv(values).items():
        try:
            out[k] = float(v)
        except ValueError as exc:
            raise ConfigurationError(f"{what} {k}={v!r}: the value must be a number") from exc
    return out


def _params(values: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in parse_kv(values).items():
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def _lineage_file(path: Path) -> dict[str, Any]:
    from bastion.artifacts.signing import read_small

    try:
        data = json.loads(read_small(path))
    except ValueError as exc:
        if isinstance(exc, ConfigurationError | InputError):
            raise
        raise ConfigurationError(f"lineage file {path} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"lineage file {path} must hold a JSON object")
    return data


# ---------------------------------------------------------------------- signing


@handle_errors
def sign_cmd(
    path: Path = typer.Argument(..., help="Model file or folder to sign."),
    key: Path = typer.Option(..., "--key", "-k", help="Private key (PEM, Ed25519 or ECDSA)."),
    out: Path | None = typer.Option(None, "--out", "-o",
                                    help="Signature path (default model.sig / FILE.sig)."),
    password_env: str | None = typer.Option(
        None, help="Environment variable holding the private key's password."),
) -> None:
    """Sign a model as an OpenSSF model-signing bundle (in-toto statement in DSSE)."""
    from bastion.artifacts.signing import sign

    password = os.environ.get(password_env, "").encode() if password_env else None
    sig = sign(path, key, out=out, password=password or None)
    typer.echo(f"signed {path} -> {sig}")


@handle_errors
def verify_cmd(
    path: Path = typer.Argument(..., help="Model file or folder to verify."),
    key: Path = typer.Option(..., "--key", "-k", help="Public key (PEM)."),
    signature: Path | None = typer.Option(None, "--signature", "-s",
                                          help="Signature bundle (default beside the model)."),
) -> None:
    """Verify a model against its signature; exit 1 naming changed, missing and extra files."""
    from bastion.artifacts.signing import verify

    result = verify(path, key, signature=signature, strict=False)
    if not result.ok:
        raise fail(f"{path}: {result.describe()}", code=1)
    typer.echo(result.describe())


@handle_errors
def keygen_cmd(
    out: Path = typer.Argument(..., help="Private key (or KEK) file to create."),
    public_out: Path | None = typer.Argument(None, help="Public key file (default OUT.pub)."),
    kind: str = typer.Option("ed25519", help="ed25519, ecdsa-p256, or aes-256 (a KEK)."),
) -> None:
    """Create a signing key pair, or a key-encryption key for ``bastion encrypt``."""
    pub = public_out or out.with_name(out.name + ".pub")
    for path in (out,) if kind == "aes-256" else (out, pub):
        if os.path.lexists(path):  # a dangling link too: keys are never overwritten
            raise ConfigurationError(f"{path} already exists; choose a new path")
    if kind == "aes-256":
        from bastion.artifacts.encryption import generate_kek

        typer.echo(f"wrote key-encryption key {generate_kek(out)}")
        return
    from bastion.artifacts.signing import generate_keypair

    priv, pub = generate_keypair(kind, out, pub)  # type: ignore[arg-type]
    typer.echo(f"wrote private key {priv} and public key {pub}")


# ---------------------------------------------------------------------- encryption


@handle_errors
def encrypt_cmd(
    src: Path = typer.Argument(..., help="File to encrypt."),
    dst: Path = typer.Argument(..., help="Encrypted output."),
    key_file: Path | None = typer.Option(None, help="KEK file (default: $BASTION_KEK)."),
    meta: list[str] | None = typer.Option(None, "--meta", help="Authenticated key=value."),
    chunk_size: int = typer.Option(1 << 20, help="Plaintext bytes per sealed chunk."),
) -> None:
    """Encrypt a file (AES-256-GCM envelope, streaming) under a key-encryption key."""
    from bastion.artifacts.encryption import encrypt_file, load_kek

    kek = load_kek(key_file)
    encrypt_file(src, dst, kek, metadata=parse_kv(meta), chunk_size=chunk_size)
    typer.echo(f"encrypted {src} -> {dst}")


@handle_errors
def decrypt_cmd(
    src: Path = typer.Argument(..., help="Encrypted file."),
    dst: Path = typer.Argument(..., help="Plaintext output (written only if it authenticates)."),
    key_file: Path | None = typer.Option(None, help="KEK file (default: $BASTION_KEK)."),
) -> None:
    """Decrypt a file; say what was written and print its authenticated metadata."""
    from bastion.artifacts.encryption import decrypt_file, load_kek

    metadata = decrypt_file(src, dst, load_kek(key_file))
    typer.echo(f"decrypted {src} -> {dst} ({dst.stat().st_size} bytes, authenticated)")
    if metadata:
        typer.echo(f"metadata: {json.dumps(metadata, sort_keys=True)}")


# ---------------------------------------------------------------------- registry

registry_app = typer.Typer(help="The versioned, signed model registry.", no_args_is_help=True)
audit_app = typer.Typer(help="The registry's tamper-evident audit log.", no_args_is_help=True)
registry_app.add_typer(audit_app, name="audit-log")


@registry_app.callback()
def _registry_options(
    ctx: typer.Context,
    registry_url: str | None = typer.Option(
        None, envvar="BASTION_REGISTRY_URL",
        help="URL of a registry service (bastion registry serve); the API key comes from"
             " $BASTION_REGISTRY_TOKEN. Without it the commands open the database directly"
             " (single-user mode)."),
    metadata_url: str | None = typer.Option(None, envvar="BASTION_REGISTRY_METADATA_URL",
                                            help="sqlite:///PATH or postgresql+psycopg://..."),
    storage_url: str | None = typer.Option(None, envvar="BASTION_REGISTRY_STORAGE_URL",
                                           help="file:///PATH or s3://BUCKET/PREFIX?endpoint_url=..."),
    actor: str | None = typer.Option(
        None, envvar="BASTION_ACTOR",
        help="Direct mode only: act as another identity (registry administrators only)."),
    trusted_key: list[Path] | None = typer.Option(
        None, "--trusted-key", help="Public key whose signatures count as valid (repeatable)."),
    kek_file: Path | None = typer.Option(
        None, envvar="BASTION_REGISTRY_KEK_FILE",
        help="Key-encryption key file: store pushed blobs encrypted and decrypt pulls."),
    checkpoint: Path | None = typer.Option(
        None, envvar="BASTION_REGISTRY_CHECKPOINT",
        help="The latest signed checkpoint of the audit log (verify and promote check it)."),
    checkpoint_key: Path | None = typer.Option(
        None, envvar="BASTION_REGISTRY_CHECKPOINT_KEY", help="Public key of the checkpoints."),
) -> None:
    keys: list[Any] = list(trusted_key or []) + _split(os.environ.get("BASTION_TRUSTED_KEYS"))
    ctx.obj = {"registry_url": registry_url, "metadata_url": metadata_url,
               "storage_url": storage_url, "actor": actor, "trusted_keys": keys,
               "kek_file": kek_file, "checkpoint": checkpoint, "checkpoint_key": checkpoint_key}


def _open(ctx: typer.Context, *, direct_only: str | None = None) -> Any:
    """The registry of this command: :func:`bastion.artifacts.registry.connect.open_registry`."""
    from bastion.artifacts.registry.connect import open_registry

    o = ctx.obj or {}
    return open_registry(url=o.get("registry_url"), metadata_url=o.get("metadata_url"),
                         storage_url=o.get("storage_url"), actor=o.get("actor"),
                         trusted_keys=o.get("trusted_keys", ()), kek_file=o.get("kek_file"),
                         checkpoint=o.get("checkpoint"), checkpoint_key=o.get("checkpoint_key"),
                         direct_only=direct_only)


def _row(v: Any) -> list[str]:
    cells = [v.name, str(v.version), ",".join(v.aliases) or "-", v.digest[:12],
             v.signature_status, v.scan_verdict, v.created_by, v.created_at[:19]]
    return [escape(c) for c in cells]


@registry_app.command("push")
@handle_errors
def push_cmd(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Model name."),
    path: Path = typer.Argument(..., help="Model file or folder."),
    sign_key: Path | None = typer.Option(None, "--sign-key", help="Private key to sign with."),
    signature: Path | None = typer.Option(None, help="An existing signature bundle to check."),
    lineage: Path | None = typer.Option(None, help="Lineage JSON file."),
    training_data_digest: str | None = typer.Option(None, help="SHA-256 of the training data."),
    code_version: str | None = typer.Option(None, help="Code version (e.g. a git commit)."),
    param: list[str] | None = typer.Option(None, "--param", help="Training parameter k=v."),
    metric: list[str] | None = typer.Option(None, "--metric", help="Metric k=v (a number)."),
    as_json: bool = typer.Option(False, "--json", help="Print the new version as JSON."),
) -> None:
    """Push a new immutable version of NAME."""
    data: dict[str, Any] = _lineage_file(lineage) if lineage else {}
    if training_data_digest:
        data["training_data_digest"] = training_data_digest
    if code_version:
        data["code_version"] = code_version
    if param:
        data["parameters"] = {**data.get("parameters", {}), **_params(param)}
    if metric:
        data["metrics"] = {**data.get("metrics", {}), **_numbers(metric, "--metric")}
    with _open(ctx) as reg:
        v = reg.push(name, path, signer_key=sign_key, signature=signature, lineage=data)
    if as_json:
        typer.echo(json.dumps(v.to_dict(), indent=2))
    else:
        typer.echo(f"pushed {v.name} v{v.version} digest {v.digest} "
                   f"signature={v.signature_status} scan={v.scan_verdict}")


@registry_app.command("list")
@handle_errors
def list_cmd(
    ctx: typer.Context,
    name: str | None = typer.Argument(None, help="Only this model."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List versions (of NAME, or of every model you may read)."""
    with _open(ctx) as reg:
        versions = reg.list(name)
    if as_json:
        typer.echo(json.dumps([v.to_dict() for v in versions], indent=2))
        return
    # narrow terminals fold cells (long names wrap onto more lines), never cut them with "…"
    table = Table(*(Column(h, overflow="fold") for h in (
        "name", "version", "aliases", "digest", "signature", "scan", "by", "created")))
    for v in versions:
        table.add_row(*_row(v))
    console.print(table)


@registry_app.command("show")
@handle_errors
def show_cmd(
    ctx: typer.Context,
    name: str = typer.Argument(...),
    ref: str = typer.Argument("latest", help="Version number, vN, alias or 'latest'."),
) -> None:
    """Show one version as JSON (digest, files, signature, scan, lineage, aliases, audits)."""
    with _open(ctx) as reg:
        typer.echo(json.dumps(reg.get(name, ref).to_dict(), indent=2))


@registry_app.command("promote")
@handle_errors
def promote_cmd(
    ctx: typer.Context,
    name: str = typer.Argument(...),
    ref: str = typer.Argument(..., help="Version to promote."),
    alias: str = typer.Argument(..., help="Alias, e.g. champion or staging."),
    report: Path | None = typer.Option(None, help="Assessment report JSON to attach first."),
    minimum: list[str] | None = typer.Option(
        None, "--min", help="Gate metric>=value, e.g. robust_accuracy=0.5 (repeatable)."),
    maximum: list[str] | None = typer.Option(None, "--max", help="Gate metric<=value."),
    require_scan: bool = typer.Option(True, "--require-scan/--no-require-scan"),
    require_signature: bool = typer.Option(True, "--require-signature/--no-require-signature"),
    audit: Path | None = typer.Option(
        None, "--audit", help="A signed audit folder (bastion audit --sign-key): refused unless "
        "it verifies against a trusted key, is about this version's files and the policy holds;"
        " then kept with the version."),
    max_severity: str | None = typer.Option(
        None, "--max-severity", help="With --audit: no unsuppressed finding above this."),
    max_age: str | None = typer.Option(
        None, "--max-age", help="With --audit: an older audit is stale, e.g. 30d."),
    audit_policy: Path | None = typer.Option(
        None, "--audit-policy", help="With --audit: a YAML policy (max_severity, min, max, "
        "max_age)."),
) -> None:
    """Point ALIAS at a version that passes the gates (clean scan, signature, thresholds, and
    with --audit a signed audit of this very version)."""
    from bastion.artifacts.registry import GateConfig

    gates = GateConfig(require_clean_scan=require_scan, require_signature=require_signature,
                       minimums=_numbers(minimum, "--min"), maximums=_numbers(maximum, "--max"))
    submission, policy = None, None
    if audit is not None:
        from bastion.audit.attest import read_submission
        from bastion.audit.policy import AuditPolicy

        if report is not None:
            raise fail("pass either --report or --audit, not both")
        base = AuditPolicy.load(audit_policy) if audit_policy is not None else AuditPolicy()
        policy = AuditPolicy.from_mapping({
            **base.to_dict(),
            **({"max_severity": max_severity} if max_severity else {}),
            **({"max_age": max_age} if max_age else {}),
        })
        submission = read_submission(audit)
    elif max_severity or max_age or audit_policy:
        raise fail("--max-severity, --max-age and --audit-policy apply to --audit")
    with _open(ctx) as reg:
        v, result = reg.promote_checked(name, ref, alias, gates=gates, report=report,
                                        signed_audit=submission, audit_policy=policy)
    typer.echo(f"{alias} -> {v.name} v{v.version}")
    if submission is not None and v.audits:
        last = v.audits[-1]
        typer.echo(f"gate used the signed audit of {last['audited_at']} (report sha256 "
                   f"{last['report_sha256'][:16]}..., verdict {last['verdict']}), kept with"
                   " the version")
    used = result.report
    if used:
        typer.echo(f"gate used report {used['id']} (sha256 {used['digest'][:16]}...,"
                   f" attached by {used['attached_by']} at {used['attached_at'][:19]})")


@registry_app.command("audit-due")
@handle_errors
def audit_due_cmd(
    ctx: typer.Context,
    max_age: str = typer.Option("30d", "--max-age", help="An older audit is stale."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List versions to re-audit: each alias's version and each model's latest whose last
    signed audit is missing, stale or made by an older check catalogue. Exit 1 when any."""
    with _open(ctx) as reg:
        due = reg.audit_due(max_age=max_age)
    if as_json:
        typer.echo(json.dumps(due, indent=2))
    elif not due:
        console.print("nothing to re-audit")
    else:
        table = Table(title="Versions to re-audit")
        for col in ("model", "version", "aliases", "why"):
            table.add_column(col, overflow="fold")
        for d in due:
            table.add_row(escape(d["name"]), str(d["version"]),
                          escape(", ".join(d["aliases"])) or "-", escape("; ".join(d["reasons"])))
        console.print(table)
    if due:
        raise typer.Exit(1)


@registry_app.command("rollback")
@handle_errors
def rollback_cmd(ctx: typer.Context, name: str = typer.Argument(...),
                 alias: str = typer.Argument(...)) -> None:
    """Point ALIAS back at the version it named before its last promotion."""
    with _open(ctx) as reg:
        v = reg.rollback(name, alias)
    typer.echo(f"{alias} -> {v.name} v{v.version}")


@registry_app.command("pull")
@handle_errors
def pull_cmd(ctx: typer.Context, name: str = typer.Argument(...),
             ref: str = typer.Argument(..., help="Version number, vN, alias or 'latest'."),
             dest: Path = typer.Argument(..., help="Where to write the model.")) -> None:
    """Download a version, checking every file's digest."""
    with _open(ctx) as reg:
        out = reg.pull(name, ref, dest)
    typer.echo(f"pulled {name}@{ref} -> {out}")


@registry_app.command("grant")
@handle_errors
def grant_cmd(ctx: typer.Context, name: str = typer.Argument(..., help="Model name or '*'."),
              identity: str = typer.Argument(...),
              level: str = typer.Argument(..., help="read, use, edit or manage.")) -> None:
    """Grant IDENTITY a permission LEVEL on model NAME."""
    with _open(ctx) as reg:
        reg.grant(name, identity, level)
    typer.echo(f"granted {level} on {name} to {identity}")


@registry_app.command("revoke")
@handle_errors
def revoke_cmd(ctx: typer.Context, name: str = typer.Argument(...),
               identity: str = typer.Argument(...)) -> None:
    """Remove IDENTITY's permissions on model NAME."""
    with _open(ctx) as reg:
        reg.revoke(name, identity)
    typer.echo(f"revoked {identity} on {name}")


@registry_app.command("permissions")
@handle_errors
def permissions_cmd(ctx: typer.Context, name: str = typer.Argument(...)) -> None:
    """Print who holds which permission on model NAME, as JSON."""
    with _open(ctx) as reg:
        typer.echo(json.dumps(reg.permissions(name), indent=2, sort_keys=True))


@registry_app.command("gc")
@handle_errors
def gc_cmd(
    ctx: typer.Context,
    older_than: float = typer.Option(24.0, "--older-than",
                                     help="Only leftovers unchanged for this many hours."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List, delete nothing."),
) -> None:
    """Delete what killed pushes left: staging blobs (local or S3) and spool folders.

    Administrators only. Keep --older-than above the longest push in progress.
    """
    with _open(ctx, direct_only="registry gc") as reg:
        found = reg.gc(older_than=older_than * 3600, dry_run=dry_run)
    for item in found:
        typer.echo(f"{'would delete' if dry_run else 'deleted'} {item}")
    typer.echo(f"{len(found)} leftover(s) {'found' if dry_run else 'deleted'}")


@registry_app.command("serve")
@handle_errors
def serve_cmd(
    ctx: typer.Context,
    access_db: str | None = typer.Option(None, "--access-db", envvar="BASTION_ACCESS_DB",
                                         help="Access database whose API keys identify callers"
                                              " (default sqlite:///bastion-access.db)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8200, help="Port to listen on."),
    cache_ttl: float = typer.Option(5.0, help="Seconds a revoked key or grant may still work."),
) -> None:
    """Run the registry service: callers authenticate with the access store's API keys."""
    import uvicorn

    from bastion.access.store import AccessStore
    from bastion.artifacts.registry.service import create_registry_app

    with _open(ctx, direct_only="registry serve") as reg, \
            AccessStore(access_db or "sqlite:///bastion-access.db", cache_ttl=cache_ttl) as store:
        uvicorn.run(create_registry_app(reg, store), host=host, port=port)


@audit_app.command("verify")
@handle_errors
def audit_verify_cmd(ctx: typer.Context) -> None:
    """Recompute the audit hash chain; exit 1 naming the first bad entry."""
    with _open(ctx) as reg:
        result = reg.verify_audit_log()
    report_chain(result)


@audit_app.command("checkpoint")
@handle_errors
def audit_checkpoint_cmd(
    ctx: typer.Context,
    key: Path = typer.Option(..., "--key", "-k",
                             help="Private key of the checkpoints: one the database writer does"
                                  " not hold."),
    out: Path | None = typer.Option(None, "--out", "-o",
                                    help="Checkpoint file (default: --checkpoint)."),
    every: float = typer.Option(0.0, "--every", help="Repeat every SECONDS until interrupted."),
    password_env: str | None = typer.Option(
        None, help="Environment variable holding the private key's password."),
) -> None:
    """Sign the audit log's head into a checkpoint kept outside the database.

    The log must first verify against the previous checkpoint in the file, so a log rewritten
    since is never signed (exit 1). Run it from another account than the registry's, e.g. from
    cron or with --every.
    """
    from bastion.artifacts.registry.core import AUDIT_LOG_NAME

    target = out or (ctx.obj or {}).get("checkpoint")
    if target is None:
        raise ConfigurationError("give --out FILE (or --checkpoint / BASTION_REGISTRY_CHECKPOINT)")
    with _open(ctx, direct_only="audit-log checkpoint") as reg:
        checkpoint_loop(target, key, password_env, every, AUDIT_LOG_NAME, reg.verify_audit_log)


def checkpoint_loop(target: Path, key: Path, password_env: str | None, every: float,
                    log: str, verify: Any) -> None:
    """Sign checkpoints of ``log`` into ``target`` (once, or every ``every`` seconds); exit 1
    if the log no longer verifies against the previous checkpoint."""
    from bastion.artifacts.registry.audit import advance_checkpoint
    from bastion.artifacts.signing import load_private_key
    from bastion.errors import SignatureError

    password = os.environ.get(password_env, "").encode() if password_env else None
    private = load_private_key(key, password=password or None)
    while True:
        try:
            cp = advance_checkpoint(target, private, log, verify)
        except SignatureError as exc:
            raise fail(str(exc), code=1) from None
        typer.echo(f"checkpoint {target}: entry {cp.seq}, head {cp.hash}, signed {cp.at}")
        if every <= 0:
            return
        time.sleep(every)


@audit_app.command("show")
@handle_errors
def audit_show_cmd(ctx: typer.Context,
                   limit: int = typer.Option(50, help="Newest entries to show.")) -> None:
    """Print the newest audit entries as JSON lines."""
    with _open(ctx) as reg:
        for e in reg.audit_log(limit=limit):
            typer.echo(json.dumps({"seq": e.seq, "at": e.at, "actor": e.actor,
                                   "action": e.action, "model": e.model, "version": e.version,
                                   "outcome": e.outcome, "details": e.details}, sort_keys=True))


def register(app: typer.Typer) -> None:
    """Add ``registry``, ``sign``, ``verify``, ``keygen``, ``encrypt`` and ``decrypt``."""
    app.add_typer(registry_app, name="registry")
    app.command("sign")(sign_cmd)
    app.command("verify")(verify_cmd)
    app.command("keygen")(keygen_cmd)
    app.command("encrypt")(encrypt_cmd)
    app.command("decrypt")(decrypt_cmd)

