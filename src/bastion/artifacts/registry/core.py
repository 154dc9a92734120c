"""The versioned, signed model registry.

A push stages every file in blob storage under a temporary key while hashing the bytes sent,
scans the model, signs or checks its signature, moves the blobs to their content addresses and
only then, as the last step, commits the metadata row in one transaction: a push interrupted at
any earlier point leaves no visible version (at most unreferenced blobs). Versions are numbered
per name under a unique constraint; writers are serialised and a conflict is retried, so
concurrent pushes of one name get distinct consecutive numbers.

Permissions are per model (or ``"*"`` for all): ``read`` (list, show), ``use`` (pull),
``edit`` (push, attach reports), ``manage`` (promote, rollback, grant); each level includes
the ones before it. Whoever creates a model by pushing its first version manages it;
``admins`` may do everything. Every action -- including refused ones -- is appended to the
hash-chained audit log.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "clf.onnx").write_bytes(b"onnx bytes")
    >>> reg = Registry(f"sqlite:///{d}/reg.db", f"file://{d}/blobs", actor="alice",
    ...                scanner=lambda p: ("clean", {}))
    >>> reg.push("fraud", d / "clf.onnx").version
    1
    >>> reg.pull("fraud", "latest", d / "copy.onnx").read_bytes()
    b'onnx bytes'
    >>> reg.verify_audit_log().ok
    True
    >>> reg.close()
"""

from __future__ import annotations

import builtins
import contextlib
import getpass
import hashlib
import hmac
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker

from bastion.artifacts.encryption import decrypt_stream, encrypt_stream, kek_id
from bastion.artifacts.registry import audit
from bastion.artifacts.registry.db import (
    AliasEvent,
    AliasRow,
    Assessment,
    AuditEntry,
    AuditRow,
    Base,
    ModelRow,
    Permission,
    VersionRow,
    make_engine,
    utcnow,
)
from bastion.artifacts.registry.gates import (
    GateConfig,
    GateResult,
    check_signature,
    evaluate_gates,
    load_keys,
    report_binding,
)
from bastion.artifacts.registry.models import (
    Lineage,
    ModelVersion,
    check_alias,
    check_level,
    check_name,
    level_rank,
    parse_ref,
)
from bastion.artifacts.registry.scanning import Scanner, default_scanner
from bastion.artifacts.registry.storage import (
    LocalStorage,
    _HashingReader,
    blob_key,
    open_storage,
)
from bastion.artifacts.signing import (
    SIGNATURE_NAME,
    PublicKey,
    load_bundle,
    load_private_key,
    load_public_key,
    public_key_hint,
    read_model,
    read_small,
    root_digest,
    sign_manifest,
)
from bastion.errors import (
    AccessDenied,
    ArtifactError,
    ConfigurationError,
    InputError,
    RegistryError,
    SignatureError,
)

__all__ = ["AUDIT_LOG_NAME", "SPOOL_PREFIX", "Registry", "Scanner", "default_scanner",
           "pull_target", "version_facts"]

log = logging.getLogger(__name__)

#: the name under which the registry's audit log is checkpointed
AUDIT_LOG_NAME = "bastion.registry"
#: prefix of the temporary folders a push spools a model into (outside a local blob store)
SPOOL_PREFIX = "bastion-push-"


def version_facts(row: VersionRow) -> str:
    """SHA-256 of the facts a gate relies on (files, signature, scan, lineage) of a version:
    recorded in its push entry of the audit chain and compared again at promotion, so editing
    a version row (``scan_verdict`` from unsafe to clean) is caught."""
    facts = {"digest": row.digest, "kind": row.kind, "source_name": row.source_name,
             "files": row.files, "size": row.size, "signature": row.signature,
             "signature_status": row.signature_status, "signer_hint": row.signer_hint,
             "scan_verdict": row.scan_verdict, "scan_details": row.scan_details,
             "lineage": row.lineage}
    text = json.dumps(facts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()

def _default_home() -> Path:
    return Path(os.environ.get("BASTION_HOME", Path.home() / ".bastion")) / "registry"


def _default_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "anonymous"


class Registry:
    """A registry of named models with immutable, signed, scanned versions.

    Args:
        metadata_url: ``sqlite:///PATH`` (default ``~/.bastion/registry/registry.db``) or
            ``postgresql+psycopg://USER@HOST:PORT/DB``.
        storage_url: ``file:///PATH`` (default ``~/.bastion/registry/blobs``) or
            ``s3://BUCKET/PREFIX?endpoint_url=...``.
        actor: the identity acting when a method is not given ``actor=``.
        admins: identities allowed everything.
        trusted_keys: public keys (paths or key objects) whose signatures count as valid.
        gates: the default :class:`GateConfig` of :meth:`promote`.
        scanner: ``path -> (verdict, details)``; the default is bastion's artifact scanner.
        kek: a 32-byte key-encryption key: blobs pushed are then stored AES-256-GCM
            envelope-encrypted (see :mod:`bastion.artifacts.encryption`) and pulls decrypt them.
        checkpoint: path of the latest signed checkpoint of the audit log (written by
            ``bastion registry audit-log checkpoint`` with a key the database writer does not
            hold) and ``checkpoint_key`` its public key: :meth:`verify_audit_log` and every
            promotion then also detect a truncated, wiped or recomputed log.

    Identity: this class trusts ``actor`` -- it is the library behind the CLI's single-user
    direct mode, where whoever can write the database is its administrator anyway. A shared
    registry runs as a service (:mod:`bastion.artifacts.registry.service`) where the caller's
    identity comes from an API key.
    """

    def __init__(
        self, metadata_url: str | None = None, storage_url: str | None = None, *,
        actor: str | None = None, admins: Sequence[str] = (), trusted_keys: Sequence[Any] = (),
        gates: GateConfig | None = None, scanner: Scanner | None = None,
        kek: bytes | None = None, max_retries: int = 20,
        checkpoint: str | os.PathLike[str] | None = None, checkpoint_key: Any = None,
    ) -> None:
        home = _default_home()
        if metadata_url is None:
            home.mkdir(parents=True, exist_ok=True)
            metadata_url = f"sqlite:///{home / 'registry.db'}"
        if storage_url is None:
            storage_url = (home / "blobs").as_uri()
        if max_retries < 1:
            raise ConfigurationError("max_retries must be at least 1")
        self.metadata_url = metadata_url
        self.engine = make_engine(metadata_url)
        self.storage = open_storage(storage_url)
        self.actor = actor or _default_actor()
        self.admins = frozenset(admins)
        self.trusted_keys: tuple[PublicKey, ...] = load_keys(tuple(trusted_keys))
        self.gates = gates or GateConfig()
        self.scanner: Scanner = scanner or default_scanner
        self.max_retries = max_retries
        if kek is not None and len(kek) != 32:
            raise ConfigurationError("kek must be 32 bytes (AES-256); see load_kek")
        self.kek = kek
        if (checkpoint is None) != (checkpoint_key is None):
            raise ConfigurationError("give both checkpoint (a file) and checkpoint_key (its"
                                     " public key), or neither")
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.checkpoint_key: PublicKey | None = (load_public_key(checkpoint_key)
                                                 if checkpoint_key is not None else None)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._create_schema()

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        """Release database connections."""
        self.engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create_schema(self) -> None:
        for attempt in range(3):
            try:
                Base.metadata.create_all(self.engine)
                with self._sessions.begin() as s:
                    audit.lock_head(s)
                return
            except (IntegrityError, ProgrammingError, OperationalError) as exc:
                if attempt == 2:
                    where = self.engine.url.render_as_string(hide_password=True)
                    raise ConfigurationError(
                        f"cannot open the registry metadata database {where}: {exc.orig or exc}"
                    ) from exc

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Session]:
        """A write transaction holding the registry-wide write lock (the audit head)."""
        try:
            with self._sessions.begin() as s:
                audit.lock_head(s)
                yield s
        except OperationalError as exc:
            raise RegistryError(f"metadata database error: {exc.orig or exc}") from exc

    def _who(self, actor: str | None) -> str:
        who = actor or self.actor
        if not who or not isinstance(who, str):
            raise ConfigurationError("an actor identity is required")
        return who

    def is_admin(self, identity: str) -> bool:
        """Whether the database records ``identity`` as an administrator (``manage`` on
        ``"*"``); the constructor's ``admins`` do not count here."""
        with self._sessions() as s:
            return s.execute(select(Permission.id).where(
                Permission.identity == identity, Permission.model == "*",
                Permission.level == "manage")).first() is not None

    def bootstrap_admin(self, identity: str) -> bool:
        """Record ``identity`` as administrator if the database has none yet; return whether
        it did. The CLI's direct mode calls it with the login name: the first user of a new
        registry database administers it (whoever can write the file could anyway)."""
        with self._tx() as s:
            if s.execute(select(Permission.id).where(Permission.model == "*",
                                                     Permission.level == "manage")).first():
                return False
            s.add(Permission(model="*", identity=identity, level="manage", granted_by=identity,
                             granted_at=utcnow()))
            audit.append(s, actor=identity, action="bootstrap_admin", model="*",
                         details={"identity": identity})
            return True

    def _level(self, s: Session, actor: str, name: str) -> str | None:
        if actor in self.admins:
            return "manage"
        rows = s.execute(select(Permission.level).where(
            Permission.identity == actor, Permission.model.in_([name, "*"]))).scalars().all()
        return max(rows, key=level_rank) if rows else None

    def _require(self, s: Session, actor: str, name: str, level: str, action: str,
                 version: int | None = None) -> None:
        have = self._level(s, actor, name)
        if level_rank(have) >= level_rank(level):
            return
        reason = (f"{actor!r} needs {level!r} permission on model {name!r} to {action}"
                  f" (has {have or 'none'}); a manager can run"
                  f" `bastion registry grant {name} {actor} {level}`")
        raise AccessDenied(reason)

    def _denied(self, actor: str, action: str, name: str | None, version: int | None,
                exc: BaseException, outcome: str = "denied") -> None:
        with self._tx() as s:
            audit.append(s, actor=actor, action=action, model=name, version=version,
                         outcome=outcome, details={"reason": str(exc)})

    @contextlib.contextmanager
    def _action(self, actor: str, action: str, name: str | None,
                version: int | None = None) -> Iterator[None]:
        """Audit a refused action (AccessDenied / RegistryError) in its own transaction."""
        try:
            yield
        except AccessDenied as exc:
            self._denied(actor, action, name, version, exc)
            raise
        except RegistryError as exc:
            self._denied(actor, action, name, version, exc, outcome="refused")
            raise

    def _model(self, s: Session, name: str) -> ModelRow:
        row = s.execute(select(ModelRow).where(ModelRow.name == name)).scalar_one_or_none()
        if row is None:
            raise RegistryError(f"no model named {name!r}; push a first version to create it")
        return row

    def _resolve(self, s: Session, model: ModelRow, ref: int | str) -> VersionRow:
        parsed = parse_ref(ref)
        q = select(VersionRow).where(VersionRow.model_id == model.id)
        if parsed == "latest":
            row = s.execute(q.order_by(VersionRow.version.desc()).limit(1)).scalar_one_or_none()
        elif isinstance(parsed, int):
            row = s.execute(q.where(VersionRow.version == parsed)).scalar_one_or_none()
        else:
            alias = s.execute(select(AliasRow).where(
                AliasRow.model_id == model.id, AliasRow.alias == parsed)).scalar_one_or_none()
            row = s.get(VersionRow, alias.version_id) if alias is not None else None
        if row is None:
            raise RegistryError(f"model {model.name!r} has no version or alias {ref!r}")
        return row

    def _view(self, s: Session, model: ModelRow, row: VersionRow) -> ModelVersion:
        aliases = s.execute(select(AliasRow.alias).where(
            AliasRow.version_id == row.id).order_by(AliasRow.alias)).scalars().all()
        return ModelVersion(
            name=model.name, version=row.version, digest=row.digest, kind=row.kind,
            source_name=row.source_name, files=row.files, size=row.size,
            signature_status=row.signature_status, signer_hint=row.signer_hint,
            scan_verdict=row.scan_verdict, scan_details=row.scan_details,
            lineage=Lineage.from_dict(row.lineage), created_at=row.created_at.isoformat(),
            created_by=row.created_by, aliases=tuple(aliases),
            audits=tuple(self._audit_rows(s, row)),
        )

    # ------------------------------------------------------------------ push

    def push(
        self, name: str, path: str | os.PathLike[str], *,
        signer_key: Any = None, signature: str | os.PathLike[str] | None = None,
        lineage: Lineage | Mapping[str, Any] | None = None, actor: str | None = None,
        key_password: bytes | None = None,
    ) -> ModelVersion:
        """Store the file or folder at ``path`` as the next version of ``name``.

        ``signer_key`` (a private key or PEM path) signs the version; otherwise a bundle given
        as ``signature`` -- or a folder's own ``model.sig`` -- is checked against the trusted
        keys (a bundle that fails is refused with :class:`SignatureError`).
        """
        check_name(name)
        who = self._who(actor)
        src = Path(path)
        lin = lineage if isinstance(lineage, Lineage) else Lineage.from_dict(lineage)
        private = load_private_key(signer_key, password=key_password) if signer_key else None
        with self._action(who, "push", name):
            with self._sessions() as s:
                if s.execute(select(ModelRow.id).where(ModelRow.name == name)).first():
                    self._require(s, who, name, "edit", "push a version")
        bundle: dict[str, Any] | None = None
        is_dir = src.is_dir() and not src.is_symlink()
        sig_path = Path(signature) if signature is not None else None
        if sig_path is None and is_dir and (src / SIGNATURE_NAME).is_file():
            sig_path = src / SIGNATURE_NAME
        if sig_path is not None:
            bundle = load_bundle(sig_path)
        ignore: list[str] = []
        if is_dir and sig_path is not None:
            with contextlib.suppress(ValueError):
                ignore.append(sig_path.resolve().relative_to(src.resolve()).as_posix())
        source_name = src.resolve().name
        spool = self._spool()
        staged: list[tuple[str, str]] = []
        try:
            # the one read of every file: hashed, copied to the private spool, then the spool
            # is scanned, signed and stored -- what is checked is what is stored
            copy = spool / source_name
            try:
                read = read_model(src, ignore=ignore, copy_to=copy)
            except InputError as exc:
                raise ArtifactError(f"cannot push {src}: {exc}") from exc
            if not read:
                raise ArtifactError(f"{src} holds no files to push")
            verdict, details = self.scanner(copy)
            # name the files as pushed, not as spooled
            details = json.loads(json.dumps(details, default=str).replace(
                json.dumps(str(copy))[1:-1], json.dumps(str(src))[1:-1]))
            if verdict == "unsafe":
                log.warning("pushing %s: the scan found it unsafe; it cannot be promoted", src)
            files: dict[str, dict[str, Any]] = {}
            for rel, (sha, size) in read.items():
                full = copy if rel == "." else copy / rel
                files[rel] = {"sha256": sha, "size": size}
                if self.kek is not None:
                    key, digest, stored = self._stage_encrypted(full)
                    final = self._blob_address(sha)
                    files[rel].update(kek_id=kek_id(self.kek), blob=final)
                elif isinstance(self.storage, LocalStorage):
                    key, digest, stored = self.storage.key_of(full), sha, size  # a rename
                    final = blob_key(sha)
                else:
                    key, digest, stored = self.storage.stage(full)
                    final = blob_key(sha)
                staged.append((key, final))
                if (digest, stored) != (sha, size):
                    raise ArtifactError(f"{src}: the copy of {rel} changed before it was stored")
            manifest = {n: str(f["sha256"]) for n, f in files.items()}
            status, hint = "none", None
            if private is not None:
                bundle = sign_manifest(source_name, manifest, private,
                                       ignore=[SIGNATURE_NAME] if is_dir else [])
                hint = public_key_hint(private.public_key())
                status = "unverified"
            if bundle is not None and self.trusted_keys:
                ok, why, hint = check_signature(bundle, manifest, self.trusted_keys)
                if not ok:
                    raise SignatureError(f"push of {name!r} refused: {why}")
                status = "valid"
            elif bundle is not None:
                status = "unverified"
            for key, final in staged:
                self.storage.commit(key, final)
            staged = []
            return self._commit_version(
                name, who, "dir" if is_dir else "file", source_name, files, manifest, bundle,
                status, hint, verdict, details, lin)
        finally:
            for key, _ in staged:
                with contextlib.suppress(Exception):
                    self.storage.discard(key)
            shutil.rmtree(spool, ignore_errors=True)

    def _spool(self) -> Path:
        """A private folder for the one copy of a pushed model: inside a local blob store
        (committed by a rename) unless blobs are encrypted (plaintext stays out of the
        store), else in the temporary folder. ``bastion registry gc`` removes what a killed
        push left."""
        if isinstance(self.storage, LocalStorage) and self.kek is None:
            return self.storage.spool_dir()
        return Path(tempfile.mkdtemp(prefix=SPOOL_PREFIX))

    def _blob_address(self, digest: str) -> str:
        """The storage key of an encrypted blob: an HMAC of the plaintext digest under the KEK,
        so whoever lists the bucket cannot test whether a known model is stored."""
        if self.kek is None:  # pragma: no cover - guarded by the caller
            raise ConfigurationError("no key-encryption key")
        tag = hmac.new(self.kek, b"bastion.registry.blob-address\0" + bytes.fromhex(digest),
                       hashlib.sha256).hexdigest()
        return f"eblobs/hmac-sha256/{tag[:2]}/{tag}"

    def _stage_encrypted(self, src: Path) -> tuple[str, str, int]:
        """Encrypt ``src`` to a local temporary file, stage that; return the plaintext digest."""
        if self.kek is None:  # pragma: no cover - guarded by the caller
            raise ConfigurationError("no key-encryption key")
        with tempfile.TemporaryDirectory(prefix=SPOOL_PREFIX) as td:
            enc = Path(td) / "blob.enc"
            with open(src, "rb") as fin, open(enc, "wb") as fout:
                reader = _HashingReader(fin)
                encrypt_stream(reader, fout, self.kek,  # type: ignore[arg-type]
                               metadata={"purpose": "bastion registry blob"})
            key, _, _ = self.storage.stage(enc)
        return key, reader.sha.hexdigest(), reader.size

    def _download(self, digest: str, meta: Mapping[str, Any], dest: _HashingWriter,
                  workdir: Path) -> None:
        if "kek_id" not in meta:
            self.storage.download(blob_key(digest), dest)  # type: ignore[arg-type]
            return
        if self.kek is None:
            raise ConfigurationError(
                "this version is encrypted at rest; open the registry with its key-encryption"
                f" key (kek id {meta['kek_id']})")
        enc = workdir / f"{digest}.enc"
        with open(enc, "wb") as fh:
            self.storage.download(str(meta.get("blob") or blob_key(digest, encrypted=True)), fh)
        try:
            with open(enc, "rb") as fh:
                decrypt_stream(fh, dest, self.kek)  # type: ignore[arg-type]
        finally:
            enc.unlink(missing_ok=True)

    def _commit_version(
        self, name: str, who: str, kind: str, source_name: str, files: dict[str, dict[str, Any]],
        manifest: dict[str, str], bundle: dict[str, Any] | None, status: str, hint: str | None,
        verdict: str, details: dict[str, Any], lineage: Lineage,
    ) -> ModelVersion:
        """The commit point: one transaction inserts the version and its audit entry."""
        last: Exception | None = None
        for _ in range(self.max_retries):
            try:
                with self._action(who, "push", name), self._tx() as s:
                    model = s.execute(select(ModelRow).where(ModelRow.name == name)
                                      ).scalar_one_or_none()
                    now = utcnow()
                    if model is None:
                        model = ModelRow(name=name, created_at=now, created_by=who)
                        s.add(model)
                        s.flush()
                        if who not in self.admins:
                            s.add(Permission(model=name, identity=who, level="manage",
                                             granted_by=who, granted_at=now))
                    else:
                        self._require(s, who, name, "edit", "push a version")
                    latest = s.execute(select(func.max(VersionRow.version)).where(
                        VersionRow.model_id == model.id)).scalar_one()
                    row = VersionRow(
                        model_id=model.id, version=(latest or 0) + 1,
                        digest=root_digest(manifest), kind=kind,
                        source_name=source_name, files=files,
                        size=sum(int(f["size"]) for f in files.values()), signature=bundle,
                        signature_status=status, signer_hint=hint, scan_verdict=verdict,
                        scan_details=details, lineage=lineage.to_dict(), created_at=now,
                        created_by=who,
                    )
                    s.add(row)
                    s.flush()
                    audit.append(s, actor=who, action="push", model=name, version=row.version,
                                 details={"digest": row.digest, "signature": status,
                                          "scan": verdict, "files": len(files),
                                          "facts": version_facts(row)})
                    return self._view(s, model, row)
            except IntegrityError as exc:  # another writer took the number or the name
                last = exc
                continue
        raise RegistryError(f"could not allocate a version of {name!r}: {last}")

    # ------------------------------------------------------------------ reads

    def get(self, name: str, ref: int | str = "latest", *, actor: str | None = None
            ) -> ModelVersion:
        """The version ``ref`` (a number, ``"v3"``, an alias or ``"latest"``) of ``name``."""
        who = self._who(actor)
        with self._action(who, "show", name), self._tx() as s:
            model = self._model(s, name)
            self._require(s, who, name, "read", "read it")
            row = self._resolve(s, model, ref)
            audit.append(s, actor=who, action="show", model=name, version=row.version)
            return self._view(s, model, row)

    def list(self, name: str | None = None, *, actor: str | None = None) -> list[ModelVersion]:
        """Every version of ``name``, or of every model the actor may read."""
        who = self._who(actor)
        with self._action(who, "list", name), self._tx() as s:
            if name is not None:
                models = [self._model(s, name)]
                self._require(s, who, name, "read", "list its versions")
            else:
                models = [m for m in s.execute(select(ModelRow).order_by(ModelRow.name)).scalars()
                          if level_rank(self._level(s, who, m.name)) >= level_rank("read")]
            out: builtins.list[ModelVersion] = []
            for m in models:
                rows = s.execute(select(VersionRow).where(VersionRow.model_id == m.id)
                                 .order_by(VersionRow.version)).scalars()
                out.extend(self._view(s, m, r) for r in rows)
            audit.append(s, actor=who, action="list", model=name,
                         details={"versions": len(out)})
            return out

    def pull(self, name: str, ref: int | str, dest: str | os.PathLike[str], *,
             actor: str | None = None) -> Path:
        """Download a version to ``dest`` and check every digest; return the written path.

        A file model is written to ``dest`` (or ``dest/<original name>`` if ``dest`` is a
        folder); a folder model becomes the folder ``dest``. Nothing appears at ``dest``
        unless every file matches its digest (and, with trusted keys, the signature holds).
        """
        who = self._who(actor)
        with self._action(who, "pull", name), self._tx() as s:
            model = self._model(s, name)
            self._require(s, who, name, "use", "pull it")
            row = self._resolve(s, model, ref)
            view = self._view(s, model, row)
            bundle = row.signature
            audit.append(s, actor=who, action="pull", model=name, version=row.version,
                         details={"digest": row.digest})
        target = pull_target(Path(dest), view)
        for stale in target.parent.glob(f".{target.name}.pull-*"):  # a killed pull's leftovers
            if stale.is_dir() and not stale.is_symlink() and stale.stat().st_uid == os.getuid():
                shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.pull-"))
        try:
            for rel, meta in view.files.items():
                out = tmp / "file" if rel == "." else tmp / "dir" / rel
                if ".." in Path(rel).parts or Path(rel).is_absolute():
                    raise ArtifactError(f"refusing unsafe file name {rel!r} in {name}")
                out.parent.mkdir(parents=True, exist_ok=True)
                h = _HashingWriter(out)
                with h:
                    self._download(str(meta["sha256"]), meta, h, tmp)
                if h.hexdigest() != meta["sha256"]:
                    raise ArtifactError(
                        f"{name} v{view.version}: {rel} does not match its digest; the stored"
                        " blob was altered or corrupted")
            if self.trusted_keys and view.signature_status == "valid":
                ok, why, _ = check_signature(bundle, view.manifest, self.trusted_keys)
                if not ok:
                    raise ArtifactError(f"{name} v{view.version}: {why}")
            src = tmp / "file" if view.kind == "file" else tmp / "dir"
            if target.is_dir():
                target.rmdir()
            os.replace(src, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    # ------------------------------------------------------------------ promotion

    def attach_report(self, name: str, ref: int | str,
                      report: str | os.PathLike[str] | Mapping[str, Any], *,
                      actor: str | None = None) -> int:
        """Record an assessment report (a dict or a JSON file) for a version; return its id.

        The report must name the version's digest (:func:`~.gates.report_binding`), so one
        model's report cannot pass another's gate. Attaching needs ``edit``; a gate counts
        only reports attached by someone who manages the model (or passed to
        :meth:`promote` by the promoter).
        """
        who = self._who(actor)
        data = _load_report(report)
        with self._action(who, "attach_report", name), self._tx() as s:
            model = self._model(s, name)
            self._require(s, who, name, "edit", "attach a report")
            return self._attach(s, model, self._resolve(s, model, ref), data, who).id

    def _attach(self, s: Session, model: ModelRow, row: VersionRow, data: dict[str, Any],
                who: str) -> Assessment:
        manifest = {n: str(f["sha256"]) for n, f in row.files.items()}
        unbound = report_binding(data, row.digest, manifest)
        if unbound is not None:
            raise RegistryError(f"report refused for {model.name} v{row.version}: {unbound}")
        digest = _report_digest(data)
        entry = Assessment(version_id=row.id, report=data, digest=digest, created_at=utcnow(),
                           created_by=who)
        s.add(entry)
        s.flush()
        audit.append(s, actor=who, action="attach_report", model=model.name,
                     version=row.version, details={"report_digest": digest, "report_id": entry.id})
        return entry

    def check_gates(self, name: str, ref: int | str, *, gates: GateConfig | None = None,
                    actor: str | None = None) -> GateResult:
        """Evaluate the promotion gates of a version without promoting it."""
        who = self._who(actor)
        with self._sessions() as s:
            model = self._model(s, name)
            self._require(s, who, name, "read", "check its gates")
            return self._gates(s, model, self._resolve(s, model, ref), gates or self.gates)

    def _gates(self, s: Session, model: ModelRow, row: VersionRow, gates: GateConfig,
               report: Assessment | None = None) -> GateResult:
        """The one place that decides whether a version may be promoted.

        Checks that the audit chain verifies (against the signed checkpoint when one is
        configured) and that the version's facts -- files, scan verdict, signature -- are the
        ones its push entry recorded, then the gates proper: scan, signature (verified again
        with the trusted keys) and the thresholds on the report ``report`` (or the newest
        report bound to this version and attached by a manager of the model).
        """
        reasons: builtins.list[str] = self._fact_problems(s, model, row)
        chosen: tuple[dict[str, Any] | None, dict[str, Any] | None] = (None, None)
        if gates.minimums or gates.maximums:
            chosen = self._pick_report(s, model, row, report, reasons)
        keys = load_keys(gates.trusted_keys) if gates.trusted_keys else self.trusted_keys
        manifest = {n: str(f["sha256"]) for n, f in row.files.items()}
        return evaluate_gates(gates, scan_verdict=row.scan_verdict, signature=row.signature,
                              manifest=manifest, report=chosen[0], keys=keys,
                              reasons=tuple(reasons), report_info=chosen[1])

    def _fact_problems(self, s: Session, model: ModelRow, row: VersionRow
                       ) -> builtins.list[str]:
        chain = audit.verify_chain(s, self._load_checkpoint())
        if not chain.ok:
            return [f"audit log: it does not verify at entry {chain.first_bad_seq}"
                    f" ({chain.reason}); the facts behind the gates cannot be trusted"]
        pushed = [json.loads(e.details) for e in s.execute(select(AuditEntry).where(
            AuditEntry.action == "push", AuditEntry.outcome == "ok",
            AuditEntry.model == model.name, AuditEntry.version == row.version)).scalars()]
        if len(pushed) != 1:
            return [f"audit log: {len(pushed)} push entries for v{row.version} instead of one"]
        recorded = pushed[0]
        if "facts" in recorded:
            same = recorded["facts"] == version_facts(row)
        else:  # versions pushed before the facts digest was recorded
            same = (recorded.get("digest"), recorded.get("scan"), recorded.get("signature")) \
                == (row.digest, row.scan_verdict, row.signature_status)
        if not same:
            return [f"audit log: v{row.version}'s stored facts (files, scan verdict, signature)"
                    " differ from what its push recorded: the version row was edited"]
        return []

    def _pick_report(self, s: Session, model: ModelRow, row: VersionRow,
                     given: Assessment | None, reasons: builtins.list[str]
                     ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The report the thresholds use, and who attached it; refusals go to ``reasons``."""
        candidates = [given] if given is not None else list(s.execute(
            select(Assessment).where(Assessment.version_id == row.id)
            .order_by(Assessment.id.desc())).scalars())
        manifest = {n: str(f["sha256"]) for n, f in row.files.items()}
        skipped: builtins.list[str] = []
        for a in candidates:
            recorded = any(json.loads(e.details).get("report_digest") == a.digest
                           for e in s.execute(select(AuditEntry).where(
                               AuditEntry.action == "attach_report",
                               AuditEntry.outcome == "ok", AuditEntry.model == model.name,
                               AuditEntry.version == row.version)).scalars())
            if _report_digest(a.report) != a.digest or not recorded:
                skipped.append(f"report {a.id} differs from what the audit log recorded")
            elif report_binding(a.report, row.digest, manifest) is not None:
                skipped.append(f"report {a.id} is not about this version")
            elif given is None and level_rank(self._level(s, a.created_by, model.name)) \
                    < level_rank("manage"):
                skipped.append(f"report {a.id} was attached by {a.created_by!r}, who does not"
                               " manage the model")
            else:
                return a.report, {"id": a.id, "digest": a.digest, "attached_by": a.created_by,
                                  "attached_at": a.created_at.isoformat()}
        reasons.append("assessment: no report is attached to this version" if not skipped else
                       f"assessment: no usable report is attached ({'; '.join(skipped)})")
        return None, None

    def promote(self, name: str, ref: int | str, alias: str, *,
                gates: GateConfig | None = None,
                report: str | os.PathLike[str] | Mapping[str, Any] | None = None,
                actor: str | None = None, signed_audit: Mapping[str, Any] | None = None,
                audit_policy: Any = None) -> ModelVersion:
        """Point ``alias`` at a version if it passes the gates; raise RegistryError naming why not.

        ``report`` (optional) is attached -- after the ``manage`` permission is checked, in the
        same transaction -- and is the one the thresholds use; otherwise the newest report
        bound to the version and attached by a manager is used. The audit entry of the
        promotion names the report (:meth:`promote_checked` also returns it).
        """
        return self.promote_checked(name, ref, alias, gates=gates, report=report,
                                    actor=actor, signed_audit=signed_audit,
                                    audit_policy=audit_policy)[0]

    def promote_checked(self, name: str, ref: int | str, alias: str, *,
                        gates: GateConfig | None = None,
                        report: str | os.PathLike[str] | Mapping[str, Any] | None = None,
                        actor: str | None = None,
                        signed_audit: Mapping[str, Any] | None = None,
                        audit_policy: Any = None) -> tuple[ModelVersion, GateResult]:
        """:meth:`promote`, also returning the passed :class:`GateResult` (which report).

        ``signed_audit`` is :func:`bastion.audit.attest.read_submission` of a
        ``bastion audit --sign-key`` folder. The promotion is refused unless its attestation
        verifies against a trusted key, its subject is this version's files and
        ``audit_policy`` (a :class:`bastion.audit.policy.AuditPolicy`: max severity, metric
        bounds, max age) holds; the audit is then kept with the version and its report is the
        one the thresholds use.
        """
        check_alias(alias)
        who = self._who(actor)
        gate = gates or self.gates
        data = _load_report(report) if report is not None else None
        with self._action(who, "promote", name), self._tx() as s:
            model = self._model(s, name)
            self._require(s, who, name, "manage", "promote it")
            row = self._resolve(s, model, ref)
            used_audit = None
            if signed_audit is not None:
                if data is not None:
                    raise RegistryError("pass either a report or a signed audit, not both")
                used_audit, data = self._check_audit(s, model, row, gate, signed_audit,
                                                     audit_policy, who, alias)
            given = self._attach(s, model, row, data, who) if data is not None else None
            result = self._gates(s, model, row, gate, given)
            if not result.passed:
                raise RegistryError(
                    f"{name} v{row.version} cannot become {alias!r}: " + "; ".join(result.reasons))
            self._point(s, model, alias, row, who, "promote")
            audit.append(s, actor=who, action="promote", model=name, version=row.version,
                         details={"alias": alias, "gates": gate.to_dict(),
                                  "checks": result.checks, "report": result.report,
                                  **({"audit": used_audit} if used_audit else {})})
            return self._view(s, model, row), result

    def _check_audit(self, s: Session, model: ModelRow, row: VersionRow, gate: GateConfig,
                     submission: Mapping[str, Any], policy: Any, who: str, alias: str
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Verify a signed audit for ``row`` under ``policy``; keep it; return what was used
        and the audit's report."""
        from bastion.audit.policy import AuditPolicy, evaluate_audit

        keys = load_keys(gate.trusted_keys) if gate.trusted_keys else self.trusted_keys
        manifest = {n: str(f["sha256"]) for n, f in row.files.items()}
        decision = evaluate_audit(submission, keys=keys, manifest=manifest,
                                  policy=policy if policy is not None else AuditPolicy())
        if not decision.passed:
            raise RegistryError(f"{model.name} v{row.version} cannot become {alias!r}: audit: "
                                + "; ".join(decision.reasons))
        report_text = str(submission["report"])
        doc = json.loads(report_text)
        entry = AuditRow(
            version_id=row.id, report=report_text,
            attestation=dict(submission["attestation"]),
            report_sha256=str(decision.used["report_sha256"]),
            audited_at=str(doc.get("created") or ""),
            catalogue_version=str(doc.get("catalogue_version") or ""),
            verdict=str((doc.get("verdict") or {}).get("status") or ""),
            key_hint=str(decision.used.get("key") or ""), created_at=utcnow(), created_by=who)
        s.add(entry)
        s.flush()
        used = {**decision.used, "audit_id": entry.id}
        audit.append(s, actor=who, action="attach_audit", model=model.name,
                     version=row.version, details={k: v for k, v in used.items()
                                                   if k != "audit"})
        return used, doc

    def audits(self, name: str, ref: int | str, *, actor: str | None = None
               ) -> builtins.list[dict[str, Any]]:
        """The signed audits kept with a version, oldest first (without their report text)."""
        who = self._who(actor)
        with self._sessions() as s:
            model = self._model(s, name)
            self._require(s, who, name, "read", "read its audits")
            return self._audit_rows(s, self._resolve(s, model, ref))

    @staticmethod
    def _audit_rows(s: Session, row: VersionRow) -> builtins.list[dict[str, Any]]:
        return [
            {"id": a.id, "audited_at": a.audited_at, "verdict": a.verdict,
             "report_sha256": a.report_sha256, "catalogue_version": a.catalogue_version,
             "key": a.key_hint, "attached_by": a.created_by,
             "attached_at": a.created_at.isoformat()}
            for a in s.execute(select(AuditRow).where(AuditRow.version_id == row.id)
                               .order_by(AuditRow.id)).scalars()
        ]

    def audit_due(self, *, max_age: Any = None, catalogue: str | None = None,
                  actor: str | None = None) -> builtins.list[dict[str, Any]]:
        """Versions to re-audit ("regular updates"): every version an alias points at, and each
        model's latest, whose last signed audit is missing, older than ``max_age`` (a
        timedelta or '30d'), or made by an older check catalogue than ``catalogue`` (default:
        this bastion's)."""
        import datetime as _dt

        from bastion.audit.policy import parse_age

        if catalogue is None:
            from bastion.audit.checks import load_catalogue
            from bastion.audit.document import catalogue_version

            catalogue = catalogue_version(load_catalogue())
        current = _catalogue_versions(catalogue)
        age = parse_age(max_age) if max_age is not None else None
        now = _dt.datetime.now(_dt.UTC)
        who = self._who(actor)
        due: builtins.list[dict[str, Any]] = []
        with self._sessions() as s:
            for model in s.execute(select(ModelRow).order_by(ModelRow.name)).scalars():
                if self._level(s, who, model.name) is None and not self.is_admin(who):
                    continue
                rows = {r.id: r for r in s.execute(select(VersionRow).where(
                    VersionRow.model_id == model.id)).scalars()}
                aliased = {a.version_id for a in s.execute(select(AliasRow).where(
                    AliasRow.model_id == model.id)).scalars()}
                latest = max(rows.values(), key=lambda r: r.version, default=None)
                wanted = {rid for rid in aliased if rid in rows}
                if latest is not None:
                    wanted.add(latest.id)
                for rid in sorted(wanted, key=lambda i: rows[i].version):
                    row = rows[rid]
                    audits = self._audit_rows(s, row)
                    reasons = _due_reasons(audits[-1] if audits else None, current, age, now)
                    if reasons:
                        view = self._view(s, model, row)
                        due.append({"name": model.name, "version": row.version,
                                    "aliases": list(view.aliases), "reasons": reasons,
                                    "last_audit": audits[-1] if audits else None})
        return due

    def _point(self, s: Session, model: ModelRow, alias: str, row: VersionRow, who: str,
               action: str) -> None:
        now = utcnow()
        current = s.execute(select(AliasRow).where(
            AliasRow.model_id == model.id, AliasRow.alias == alias)).scalar_one_or_none()
        if current is None:
            s.add(AliasRow(model_id=model.id, alias=alias, version_id=row.id, updated_at=now))
        else:
            current.version_id, current.updated_at = row.id, now
        s.add(AliasEvent(model_id=model.id, alias=alias, action=action, version_id=row.id,
                         at=now, actor=who))
        s.flush()

    def rollback(self, name: str, alias: str, *, actor: str | None = None) -> ModelVersion:
        """Point ``alias`` back at the version it named before its latest promotion."""
        check_alias(alias)
        who = self._who(actor)
        with self._action(who, "rollback", name), self._tx() as s:
            model = self._model(s, name)
            self._require(s, who, name, "manage", "roll it back")
            events = s.execute(select(AliasEvent).where(
                AliasEvent.model_id == model.id, AliasEvent.alias == alias)
                .order_by(AliasEvent.id)).scalars().all()
            stack: list[int] = []
            for e in events:
                if e.action == "promote":
                    stack.append(e.version_id)
                elif stack:
                    stack.pop()
            if len(stack) < 2:
                raise RegistryError(f"alias {alias!r} of {name!r} has no earlier version to roll"
                                    " back to")
            old = s.get(VersionRow, stack[-1])
            row = s.get(VersionRow, stack[-2])
            if row is None or old is None:  # pragma: no cover - foreign keys prevent it
                raise RegistryError("alias history refers to a missing version")
            self._point(s, model, alias, row, who, "rollback")
            audit.append(s, actor=who, action="rollback", model=name, version=row.version,
                         details={"alias": alias, "from_version": old.version})
            return self._view(s, model, row)

    # ------------------------------------------------------------------ permissions

    def grant(self, name: str, identity: str, level: str, *, actor: str | None = None) -> None:
        """Give ``identity`` the permission ``level`` on model ``name`` (``"*"``: all models)."""
        check_level(level)
        if name != "*":
            check_name(name)
        if not identity:
            raise ConfigurationError("identity must be a non-empty string")
        who = self._who(actor)
        with self._action(who, "grant", name), self._tx() as s:
            if name != "*":
                self._model(s, name)
            self._require(s, who, name, "manage", f"grant {level!r}")
            row = s.execute(select(Permission).where(
                Permission.model == name, Permission.identity == identity)).scalar_one_or_none()
            now = utcnow()
            if row is None:
                s.add(Permission(model=name, identity=identity, level=level, granted_by=who,
                                 granted_at=now))
            else:
                row.level, row.granted_by, row.granted_at = level, who, now
            audit.append(s, actor=who, action="grant", model=name,
                         details={"identity": identity, "level": level})

    def revoke(self, name: str, identity: str, *, actor: str | None = None) -> None:
        """Remove every permission ``identity`` holds directly on ``name``."""
        who = self._who(actor)
        with self._action(who, "revoke", name), self._tx() as s:
            self._require(s, who, name, "manage", "revoke permissions")
            rows = list(s.execute(select(Permission).where(
                Permission.model == name, Permission.identity == identity)).scalars())
            if not rows:
                raise RegistryError(f"{identity!r} holds no permission on {name!r}; nothing to"
                                    f" revoke (see `bastion registry permissions {name}`)")
            for row in rows:
                s.delete(row)
            audit.append(s, actor=who, action="revoke", model=name,
                         details={"identity": identity, "level": rows[0].level})

    def permissions(self, name: str, *, actor: str | None = None) -> dict[str, str]:
        """``{identity: level}`` granted on ``name`` (not counting ``"*"`` grants)."""
        who = self._who(actor)
        with self._sessions() as s:
            self._require(s, who, name, "read", "see its permissions")
            rows = s.execute(select(Permission).where(Permission.model == name)).scalars()
            return {r.identity: r.level for r in rows}

    # ------------------------------------------------------------------ audit

    def audit_log(self, *, limit: int | None = None) -> builtins.list[audit.AuditRecord]:
        """The audit entries, oldest first (the newest ``limit`` if given)."""
        with self._sessions() as s:
            q = select(AuditEntry).order_by(AuditEntry.seq.desc())
            if limit is not None:
                q = q.limit(limit)
            rows = list(s.execute(q).scalars())[::-1]
            return [audit.AuditRecord(seq=r.seq, at=r.at, actor=r.actor, action=r.action,
                                      model=r.model, version=r.version, outcome=r.outcome,
                                      details=json.loads(r.details), hash=r.hash) for r in rows]

    def _load_checkpoint(self) -> audit.Checkpoint | None:
        """The configured signed checkpoint (``None`` if none is configured or written yet)."""
        if self.checkpoint is None or self.checkpoint_key is None:
            return None
        if not self.checkpoint.exists():
            log.warning("no audit checkpoint at %s yet: the log is checked by its chain alone",
                        self.checkpoint)
            return None
        return audit.load_checkpoint(self.checkpoint, self.checkpoint_key, log=AUDIT_LOG_NAME)

    def verify_audit_log(self, checkpoint: audit.Checkpoint | None = None
                         ) -> audit.AuditVerification:
        """Recompute the audit hash chain; ``ok`` is false if any entry was edited or removed,
        or -- against the signed ``checkpoint`` (default: the configured one) -- if the log
        was truncated below it, wiped or recomputed."""
        with self._sessions() as s:
            return audit.verify_chain(s, checkpoint or self._load_checkpoint())

    # ------------------------------------------------------------------ maintenance

    def gc(self, *, older_than: float = 24 * 3600, dry_run: bool = False,
           actor: str | None = None) -> builtins.list[str]:
        """Delete what killed pushes left: staging blobs (local folder or S3) and spool
        folders older than ``older_than`` seconds; return what was (or would be) deleted.

        Needs ``manage`` on ``"*"`` (an administrator). A push in progress is younger than
        the threshold; keep it above the longest push.
        """
        who = self._who(actor)
        if older_than < 0:
            raise ConfigurationError(f"older_than must be >= 0 seconds, got {older_than}")
        with self._action(who, "gc", None), self._sessions() as s:
            self._require(s, who, "*", "manage", "collect garbage")
        found = self.storage.stale("staging/", older_than)
        tmp, cutoff = Path(tempfile.gettempdir()), time.time() - older_than
        spools = [p for p in tmp.glob(SPOOL_PREFIX + "*")
                  if p.is_dir() and not p.is_symlink() and p.lstat().st_uid == os.getuid()
                  and p.lstat().st_mtime <= cutoff]
        if not dry_run:
            for key in found:
                self.storage.delete_tree(key)
            for p in spools:
                shutil.rmtree(p, ignore_errors=True)
            with self._tx() as s:
                audit.append(s, actor=who, action="gc", details={
                    "deleted": len(found) + len(spools), "older_than": older_than})
        return [*found, *(str(p) for p in spools)]


class _HashingWriter:
    """A binary file that hashes what is written to it."""

    def __init__(self, path: Path) -> None:
        self._fh = open(path, "wb")
        self._sha = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self._sha.update(data)
        return self._fh.write(data)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()

    def __enter__(self) -> _HashingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()


def pull_target(dest: Path, view: ModelVersion) -> Path:
    """Where a pull writes ``view`` given ``dest`` (created folders included), or a clean
    ConfigurationError: the target exists, or a file stands where a folder is expected."""
    target = dest / view.source_name if view.kind == "file" and dest.is_dir() else dest
    if target.exists() and not (target.is_dir() and not any(target.iterdir())):
        raise ConfigurationError(f"{target} already exists; pull to a new path")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigurationError(f"{parent} is a file where a folder is expected;"
                                         " pull to a path inside a folder")
            break
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _report_digest(data: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _load_report(report: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(report, Mapping):
        return json.loads(json.dumps(dict(report)))
    try:
        data = json.loads(read_small(report))
    except ValueError as exc:
        if isinstance(exc, InputError):
            raise
        raise ConfigurationError(f"report {report} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigurationError(f"report {report} must hold a JSON object")
    return data



def _catalogue_versions(text: str) -> dict[str, int]:
    """``artifact@1,evasion@2`` as ``{check: version}`` (unparseable parts are ignored)."""
    out: dict[str, int] = {}
    for part in str(text or "").split(","):
        name, _, version = part.strip().partition("@")
        if name and version.isdigit():
            out[name] = int(version)
    return out


def _due_reasons(last: Mapping[str, Any] | None, current: Mapping[str, int], age: Any,
                 now: Any) -> builtins.list[str]:
    import datetime as _dt

    if last is None:
        return ["never audited (no signed audit is kept with it)"]
    reasons = []
    if age is not None:
        try:
            when = _dt.datetime.fromisoformat(str(last["audited_at"]).replace("Z", "+00:00"))
            if when.tzinfo is None:
                when = when.replace(tzinfo=_dt.UTC)
        except ValueError:
            reasons.append("its last audit has no valid date")
        else:
            if now - when > age:
                reasons.append(f"stale: last audited {(now - when).days} days ago"
                               f" (max age {age.days} days)")
    made = _catalogue_versions(str(last.get("catalogue_version", "")))
    older = sorted(n for n, v in current.items() if made.get(n, 0) < v)
    if older:
        reasons.append("audited by an older check catalogue (new or updated checks: "
                       + ", ".join(f"{n}@{current[n]}" for n in older) + ")")
    return reasons
