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
import json
import logging
import os
import shutil
import tempfile
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
)
from bastion.artifacts.registry.models import (
    Lineage,
    ModelVersion,
    check_alias,
    check_level,
    check_name,
    level_rank,
)
from bastion.artifacts.registry.scanning import Scanner, default_scanner
from bastion.artifacts.registry.storage import _HashingReader, blob_key, open_storage
from bastion.artifacts.signing import (
    SIGNATURE_NAME,
    PublicKey,
    list_files,
    load_private_key,
    public_key_hint,
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

__all__ = ["Registry", "Scanner", "default_scanner"]

log = logging.getLogger(__name__)

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
    """

    def __init__(
        self, metadata_url: str | None = None, storage_url: str | None = None, *,
        actor: str | None = None, admins: Sequence[str] = (), trusted_keys: Sequence[Any] = (),
        gates: GateConfig | None = None, scanner: Scanner | None = None,
        kek: bytes | None = None, max_retries: int = 20,
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
        text = str(ref).strip()
        q = select(VersionRow).where(VersionRow.model_id == model.id)
        if text == "latest":
            row = s.execute(q.order_by(VersionRow.version.desc()).limit(1)).scalar_one_or_none()
        elif text.lstrip("v").isdigit():
            row = s.execute(q.where(VersionRow.version == int(text.lstrip("v")))
                            ).scalar_one_or_none()
        else:
            alias = s.execute(select(AliasRow).where(
                AliasRow.model_id == model.id, AliasRow.alias == text)).scalar_one_or_none()
            row = s.get(VersionRow, alias.version_id) if alias is not None else None
        if row is None:
            raise RegistryError(f"model {model.name!r} has no version or alias {text!r}")
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
        if not src.exists():
            raise FileNotFoundError(2, "No such file or directory", str(src))
        lin = lineage if isinstance(lineage, Lineage) else Lineage.from_dict(lineage)
        private = load_private_key(signer_key, password=key_password) if signer_key else None
        with self._action(who, "push", name):
            with self._sessions() as s:
                if s.execute(select(ModelRow.id).where(ModelRow.name == name)).first():
                    self._require(s, who, name, "edit", "push a version")
        bundle: dict[str, Any] | None = None
        sig_path = Path(signature) if signature is not None else None
        if sig_path is None and src.is_dir() and (src / SIGNATURE_NAME).is_file():
            sig_path = src / SIGNATURE_NAME
        if sig_path is not None:
            try:
                bundle = json.loads(sig_path.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise ArtifactError(f"signature {sig_path} is not JSON: {exc}") from exc
        ignore: list[str] = []
        if src.is_dir() and sig_path is not None:
            with contextlib.suppress(ValueError):
                ignore.append(sig_path.resolve().relative_to(src.resolve()).as_posix())
        try:
            entries = list_files(src, ignore=ignore)
        except InputError as exc:
            raise ArtifactError(f"cannot push {src}: {exc}") from exc
        if not entries:
            raise ArtifactError(f"{src} holds no files to push")
        verdict, details = self.scanner(src)
        if verdict == "unsafe":
            log.warning("pushing %s: the scan found it unsafe; it cannot be promoted", src)
        staged: list[tuple[str, str]] = []
        try:
            files: dict[str, dict[str, Any]] = {}
            for rel, full in entries:
                if self.kek is None:
                    key, digest, size = self.storage.stage(full)
                    files[rel] = {"sha256": digest, "size": size}
                else:
                    key, digest, size = self._stage_encrypted(full)
                    files[rel] = {"sha256": digest, "size": size, "kek_id": kek_id(self.kek)}
                staged.append((key, blob_key(digest, encrypted=self.kek is not None)))
            manifest = {n: str(f["sha256"]) for n, f in files.items()}
            status, hint = "none", None
            if private is not None:
                bundle = sign_manifest(src.resolve().name, manifest, private,
                                       ignore=[SIGNATURE_NAME] if src.is_dir() else [])
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
                name, who, src, files, manifest, bundle, status, hint, verdict, details, lin)
        finally:
            for key, _ in staged:
                with contextlib.suppress(Exception):
                    self.storage.discard(key)

    def _stage_encrypted(self, src: Path) -> tuple[str, str, int]:
        """Encrypt ``src`` to a local temporary file, stage that; return the plaintext digest."""
        if self.kek is None:  # pragma: no cover - guarded by the caller
            raise ConfigurationError("no key-encryption key")
        with tempfile.TemporaryDirectory(prefix="bastion-push-") as td:
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
            self.storage.download(blob_key(digest, encrypted=True), fh)
        try:
            with open(enc, "rb") as fh:
                decrypt_stream(fh, dest, self.kek)  # type: ignore[arg-type]
        finally:
            enc.unlink(missing_ok=True)

    def _commit_version(
        self, name: str, who: str, src: Path, files: dict[str, dict[str, Any]],
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
                        digest=root_digest(manifest), kind="dir" if src.is_dir() else "file",
                        source_name=src.resolve().name, files=files,
                        size=sum(int(f["size"]) for f in files.values()), signature=bundle,
                        signature_status=status, signer_hint=hint, scan_verdict=verdict,
                        scan_details=details, lineage=lineage.to_dict(), created_at=now,
                        created_by=who,
                    )
                    s.add(row)
                    s.flush()
                    audit.append(s, actor=who, action="push", model=name, version=row.version,
                                 details={"digest": row.digest, "signature": status,
                                          "scan": verdict, "files": len(files)})
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
        target = Path(dest)
        if view.kind == "file" and target.is_dir():
            target = target / view.source_name
        if target.exists() and not (target.is_dir() and not any(target.iterdir())):
            raise ConfigurationError(f"{target} already exists; pull to a new path")
        target.parent.mkdir(parents=True, exist_ok=True)
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
                      actor: str | None = None) -> None:
        """Record an assessment report (a dict or a JSON file) for a version."""
        who = self._who(actor)
        data = _load_report(report)
        with self._action(who, "attach_report", name), self._tx() as s:
            model = self._model(s, name)
            self._require(s, who, name, "edit", "attach a report")
            row = self._resolve(s, model, ref)
            digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
            s.add(Assessment(version_id=row.id, report=data, digest=digest,
                             created_at=utcnow(), created_by=who))
            audit.append(s, actor=who, action="attach_report", model=name,
                         version=row.version, details={"report_digest": digest})

    def check_gates(self, name: str, ref: int | str, *, gates: GateConfig | None = None,
                    actor: str | None = None) -> GateResult:
        """Evaluate the promotion gates of a version without promoting it."""
        who = self._who(actor)
        with self._sessions() as s:
            model = self._model(s, name)
            self._require(s, who, name, "read", "check its gates")
            return self._gates(s, self._resolve(s, model, ref), gates or self.gates)

    def _gates(self, s: Session, row: VersionRow, gates: GateConfig) -> GateResult:
        report = None
        if gates.minimums or gates.maximums:
            report = s.execute(select(Assessment.report).where(Assessment.version_id == row.id)
                               .order_by(Assessment.id.desc()).limit(1)).scalar_one_or_none()
        keys = load_keys(gates.trusted_keys) if gates.trusted_keys else self.trusted_keys
        manifest = {n: str(f["sha256"]) for n, f in row.files.items()}
        return evaluate_gates(gates, scan_verdict=row.scan_verdict, signature=row.signature,
                              manifest=manifest, report=report, keys=keys)

    def promote(self, name: str, ref: int | str, alias: str, *,
                gates: GateConfig | None = None,
                report: str | os.PathLike[str] | Mapping[str, Any] | None = None,
                actor: str | None = None) -> ModelVersion:
        """Point ``alias`` at a version if it passes the gates; raise RegistryError naming why not.

        ``report`` (optional) is attached first, then the newest attached report is checked.
        """
        check_alias(alias)
        who = self._who(actor)
        gate = gates or self.gates
        if report is not None:
            self.attach_report(name, ref, report, actor=who)
        with self._action(who, "promote", name), self._tx() as s:
            model = self._model(s, name)
            self._require(s, who, name, "manage", "promote it")
            row = self._resolve(s, model, ref)
            result = self._gates(s, row, gate)
            if not result.passed:
                raise RegistryError(
                    f"{name} v{row.version} cannot become {alias!r}: " + "; ".join(result.reasons))
            self._point(s, model, alias, row, who, "promote")
            audit.append(s, actor=who, action="promote", model=name, version=row.version,
                         details={"alias": alias, "gates": gate.to_dict(),
                                  "checks": result.checks})
            return self._view(s, model, row)

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
            for row in s.execute(select(Permission).where(
                    Permission.model == name, Permission.identity == identity)).scalars():
                s.delete(row)
            audit.append(s, actor=who, action="revoke", model=name,
                         details={"identity": identity})

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

    def verify_audit_log(self) -> audit.AuditVerification:
        """Recompute the audit hash chain; ``ok`` is false if any entry was edited or removed."""
        with self._sessions() as s:
            return audit.verify_chain(s)


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


def _load_report(report: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(report, Mapping):
        return json.loads(json.dumps(dict(report)))
    try:
        data = json.loads(Path(report).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigurationError(f"report {report} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigurationError(f"report {report} must hold a JSON object")
    return data

