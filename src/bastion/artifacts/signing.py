"""Sign and verify model files and folders (OpenSSF model-signing v1.0 layout).

A model -- one file or a folder -- is described by a *manifest*: the SHA-256 digest of every
file, keyed by its POSIX path relative to the folder (a single file is named ``"."``). The
manifest becomes an in-toto Statement v1 whose predicate (type
``https://model_signing/signature/v1.0``) lists the resources ``{name, algorithm, digest}`` and
whose one subject is the model's name with the SHA-256 of the concatenated file digests. The
statement is signed with DSSE (pre-authentication encoding) and stored in a Sigstore bundle
(media type ``application/vnd.dev.sigstore.bundle.v0.3+json``) whose
``verificationMaterial.publicKey.hint`` is the SHA-256 of the PEM public key. This is the
layout of the OpenSSF ``model-signing`` package, so an ECDSA signature made here verifies there
and the other way round (``model-signing`` does not support Ed25519 keys; bastion does).

Format reference: https://github.com/sigstore/model-transparency (v1.0 predicate),
DSSE https://github.com/secure-systems-lab/dsse/blob/v1.0.0/protocol.md.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "model").mkdir(), (d / "model" / "w.bin").write_bytes(b"weights")
    >>> priv, pub = generate_keypair("ed25519", d / "k.pem", d / "k.pub")
    >>> sig = sign(d / "model", priv)
    >>> sig.name
    'model.sig'
    >>> verify(d / "model", pub).ok
    True
    >>> _ = (d / "model" / "w.bin").write_bytes(b"weightz")
    >>> verify(d / "model", pub, strict=False).changed
    ('w.bin',)
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from bastion.errors import ConfigurationError, InputError, SignatureError

__all__ = [
    "BUNDLE_MEDIA_TYPE",
    "DEFAULT_IGNORE",
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "SIGNATURE_NAME",
    "STATEMENT_TYPE",
    "KeyKind",
    "VerifyResult",
    "atomic_write",
    "compare_manifests",
    "generate_keypair",
    "hash_file",
    "list_files",
    "load_bundle",
    "load_private_key",
    "load_public_key",
    "manifest_of",
    "public_key_hint",
    "read_file_once",
    "read_model",
    "read_small",
    "root_digest",
    "sign",
    "sign_bytes",
    "sign_manifest",
    "verify",
    "verify_bundle",
    "verify_bytes",
]

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
#: default file name of the signature bundle of a folder
SIGNATURE_NAME = "model.sig"
#: paths never part of a folder's manifest (as in model-signing)
DEFAULT_IGNORE = (".git", ".gitattributes", ".github", ".gitignore")

KeyKind = Literal["ed25519", "ecdsa-p256"]
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey

_CHUNK = 1 << 20


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify`: ``ok`` only if the signature is valid and no file differs.

    ``extra`` are files present but not signed, ``missing`` signed but absent, ``changed``
    present with another digest; ``reason`` says in words why ``ok`` is false.
    """

    ok: bool
    extra: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    reason: str = ""
    model_name: str = ""
    files: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """One line naming what failed, or ``"verified"``."""
        if self.ok:
            return f"verified: {len(self.files)} file(s) of {self.model_name!r}"
        parts = [self.reason] if self.reason else []
        for label, names in (("changed", self.changed), ("missing", self.missing),
                             ("extra", self.extra)):
            if names:
                parts.append(f"{label}: {', '.join(names)}")
        return "; ".join(parts) or "verification failed"


# --------------------------------------------------------------------------- keys


def generate_keypair(
    kind: KeyKind, private_out: str | os.PathLike[str], public_out: str | os.PathLike[str],
    *, password: bytes | None = None,
) -> tuple[Path, Path]:
    """Create a new key pair, write the private key (PKCS#8 PEM, mode 0600) and the public key.

    ``kind`` is ``"ed25519"`` or ``"ecdsa-p256"``; pass ``password`` to encrypt the private key.
    Returns ``(private_path, public_path)``.
    """
    key: PrivateKey
    if kind == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    elif kind == "ecdsa-p256":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ConfigurationError(f"kind must be 'ed25519' or 'ecdsa-p256', got {kind!r}")
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password
        else serialization.NoEncryption()
    )
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_path, public_path = Path(private_out), Path(public_out)
    for path in (private_path, public_path):
        _refuse_existing(path)
    atomic_write(private_path, priv, mode=0o600, exclusive=True)
    try:
        atomic_write(public_path, pub, mode=0o644, exclusive=True)
    except BaseException:
        private_path.unlink(missing_ok=True)
        raise
    return private_path, public_path


def _refuse_existing(path: Path) -> None:
    """ConfigurationError if anything -- a file, a folder, a link, even a dangling one -- is at
    ``path``: a key is never overwritten."""
    if os.path.lexists(path):
        what = "a symbolic link" if path.is_symlink() else "something"
        raise ConfigurationError(f"{path} already exists ({what}); choose a new path -- keys are"
                                 " never overwritten")


def load_private_key(
    key: PrivateKey | str | os.PathLike[str], *, password: bytes | None = None
) -> PrivateKey:
    """Load a PEM private key (Ed25519 or ECDSA P-256/384/521) from a path, or pass one through."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        return key
    data = Path(key).read_bytes()
    try:
        loaded = serialization.load_pem_private_key(data, password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigurationError(
            f"cannot read private key {key}: {exc}; expected a PEM (PKCS#8) Ed25519 or ECDSA key"
        ) from exc
    if not isinstance(loaded, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise ConfigurationError(
            f"private key {key} is a {type(loaded).__name__}; use an Ed25519 or ECDSA key"
        )
    return loaded


def load_public_key(key: PublicKey | PrivateKey | str | os.PathLike[str]) -> PublicKey:
    """Load a PEM public key from a path (a private key yields its public half)."""
    if isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        return key.public_key()
    data = Path(key).read_bytes()
    try:
        loaded = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigurationError(
            f"cannot read public key {key}: {exc}; expected a PEM SubjectPublicKeyInfo key"
        ) from exc
    if not isinstance(loaded, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise ConfigurationError(
            f"public key {key} is a {type(loaded).__name__}; use an Ed25519 or ECDSA key"
        )
    return loaded


def public_key_hint(key: PublicKey) -> str:
    """SHA-256 (hex) of the PEM encoding of ``key``: the bundle's key identifier."""
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(pem).hexdigest()


def _ec_hash(key: ec.EllipticCurvePublicKey) -> hashes.HashAlgorithm:
    size = key.curve.key_size
    if size == 256:
        return hashes.SHA256()
    if size == 384:
        return hashes.SHA384()
    if size == 521:
        return hashes.SHA512()
    raise ConfigurationError(f"unsupported ECDSA curve {key.curve.name}; use P-256")


# --------------------------------------------------------------------------- manifests


def _what(mode: int) -> str:
    """Name a non-regular file type in words."""
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _refuse(shown: object, mode: int) -> InputError:
    if stat.S_ISLNK(mode):
        return InputError(f"{shown} is a symbolic link; models may not hold links")
    return InputError(f"{shown} is {_what(mode)}, not a regular file; models may hold only"
                      " regular files and folders")


_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
#: what must not change between opening a file and reading its last byte
_STABLE = ("st_dev", "st_ino", "st_size", "st_mtime_ns", "st_ctime_ns")


def _open_regular(name: str | os.PathLike[str], shown: object, *,
                  dir_fd: int | None = None) -> tuple[int, os.stat_result]:
    """Open a regular file without following a link and without blocking on a FIFO."""
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(f"{shown} is a symbolic link; models may not hold links") from None
        if exc.errno == errno.ENXIO:  # opening a Unix socket
            raise InputError(f"{shown} is a socket, not a regular file; models may hold only"
                             " regular files and folders") from None
        raise type(exc)(exc.errno, exc.strerror, str(shown)) from None
    before = os.fstat(fd)
    if not stat.S_ISREG(before.st_mode):
        os.close(fd)
        raise _refuse(shown, before.st_mode)
    os.set_blocking(fd, True)
    return fd, before


def read_file_once(
    path: str | os.PathLike[str], *, copy_to: str | os.PathLike[str] | None = None,
    dir_fd: int | None = None, shown: object = None,
) -> tuple[str, int]:
    """Read a regular file once: return ``(sha256 hex, size)`` of exactly the bytes read.

    The file is opened without following a symbolic link (``O_NOFOLLOW``) and without
    blocking on a FIFO; anything but a regular file is refused with :class:`InputError`, and
    so is a file that changed while it was read (its size, modification or change time, or
    inode moved). With ``copy_to`` the same bytes are written to that new file (mode 0600,
    never overwriting): what is hashed is what is copied.
    """
    shown = path if shown is None else shown
    fd, before = _open_regular(path, shown, dir_fd=dir_fd)
    h, size = hashlib.sha256(), 0
    out = None
    try:
        if copy_to is not None:
            out = os.fdopen(os.open(copy_to, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                    | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600), "wb")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
                if out is not None:
                    out.write(chunk)
        after = os.fstat(fd)
        if out is not None:
            out.flush()
            os.fsync(out.fileno())
    finally:
        os.close(fd)
        if out is not None:
            out.close()
    if size != before.st_size or any(getattr(before, a) != getattr(after, a) for a in _STABLE):
        raise InputError(f"{shown} changed while it was read; retry once nothing writes to it")
    return h.hexdigest(), size


def read_small(path: str | os.PathLike[str], *, limit: int = 16 << 20) -> bytes:
    """The bytes of a small regular file (a signature, a report), read without following links
    or blocking on a FIFO; :class:`InputError` if it is larger than ``limit``."""
    fd, before = _open_regular(path, path)
    if before.st_size > limit:
        os.close(fd)
        raise InputError(f"{path} is {before.st_size} bytes; at most {limit} are expected")
    with os.fdopen(fd, "rb") as fh:
        return fh.read(limit + 1)[:limit]


def hash_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a regular file, read once from a descriptor (see :func:`read_file_once`)."""
    return read_file_once(path)[0]


def _walk(dfd: int, rel_dir: str, shown_dir: Path, skip: set[str]
          ) -> Iterator[tuple[str, int, str, Path]]:
    """Yield ``(relative name, folder descriptor, entry name, shown path)`` of every file below
    the open folder ``dfd``; folders are opened relative to their parent without following
    links, so a folder swapped for a link while walking is refused rather than followed."""
    with os.scandir(dfd) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
        if rel in skip:
            continue
        shown = shown_dir / e.name
        mode = os.stat(e.name, dir_fd=dfd, follow_symlinks=False).st_mode
        if stat.S_ISDIR(mode):
            try:
                sub = os.open(e.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                              | getattr(os, "O_CLOEXEC", 0), dir_fd=dfd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise InputError(f"{shown} changed while the folder was read") from None
                raise
            try:
                yield from _walk(sub, rel, shown, skip)
            finally:
                os.close(sub)
        elif stat.S_ISREG(mode):
            yield rel, dfd, e.name, shown
        else:
            raise _refuse(shown, mode)


def _model_root(path: str | os.PathLike[str]) -> tuple[Path, int]:
    root = Path(path)
    try:
        mode = os.lstat(root).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(2, "No such file or directory", str(root)) from None
    if stat.S_ISLNK(mode):
        raise InputError(f"{root} is a symbolic link; sign or push the file it points to")
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise _refuse(root, mode)
    return root, mode


def read_model(
    path: str | os.PathLike[str], *, ignore: Iterable[str] = (),
    copy_to: str | os.PathLike[str] | None = None,
) -> dict[str, tuple[str, int]]:
    """``{relative POSIX name: (sha256, size)}`` of a model file or folder, each file read once.

    The single read of :func:`read_file_once` per file (no links followed, FIFOs, sockets and
    devices refused, a file changed while read refused). With ``copy_to`` (a path that does
    not exist yet) the model is copied there from the very bytes hashed -- so a scanner run on
    the copy scans what was hashed, signed and stored. A single file is named ``"."``.
    """
    root, mode = _model_root(path)
    target = Path(copy_to) if copy_to is not None else None
    if stat.S_ISREG(mode):
        return {".": read_file_once(root, copy_to=target)}
    skip = set(DEFAULT_IGNORE) | {str(i).strip("/") for i in ignore}
    out: dict[str, tuple[str, int]] = {}
    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    try:
        if target is not None:
            target.mkdir(mode=0o700)
        for rel, dfd, name, shown in _walk(top, "", root, skip):
            dest = None
            if target is not None:
                dest = target / rel
                dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            out[rel] = read_file_once(name, dir_fd=dfd, shown=shown, copy_to=dest)
    finally:
        os.close(top)
    return dict(sorted(out.items()))


def list_files(
    path: str | os.PathLike[str], *, ignore: Iterable[str] = ()
) -> list[tuple[str, Path]]:
    """``[(relative POSIX name, path)]`` of the files a manifest covers, sorted by name.

    A single file is named ``"."``. Entries of ``ignore`` (relative names, files or folders)
    and :data:`DEFAULT_IGNORE` are skipped. Symbolic links are refused, as in model-signing's
    default, and so are FIFOs, sockets and devices. To hash or copy the files, use
    :func:`read_model`, which reads each one once.
    """
    root, mode = _model_root(path)
    if stat.S_ISREG(mode):
        return [(".", root)]
    skip = set(DEFAULT_IGNORE) | {str(i).strip("/") for i in ignore}
    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    try:
        return sorted((rel, root / rel) for rel, _, _, _ in _walk(top, "", root, skip))
    finally:
        os.close(top)


def manifest_of(
    path: str | os.PathLike[str], *, ignore: Iterable[str] = ()
) -> dict[str, str]:
    """``{relative POSIX name: sha256 hex}`` of the files, each read once (:func:`read_model`)."""
    return {rel: digest for rel, (digest, _) in read_model(path, ignore=ignore).items()}


def root_digest(files: Mapping[str, str]) -> str:
    """SHA-256 over the raw file digests in name order: the statement subject's digest."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(bytes.fromhex(files[name]))
    return h.hexdigest()


def _statement(model_name: str, files: Mapping[str, str], ignore: Iterable[str]) -> bytes:
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": model_name, "digest": {"sha256": root_digest(files)}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": {
                "method": "files",
                "hash_type": "sha256",
                "allow_symlinks": False,
                "ignore_paths": sorted(set(DEFAULT_IGNORE) | set(ignore)),
            },
            "resources": [
                {"name": n, "algorithm": "sha256", "digest": files[n]} for n in sorted(files)
            ],
        },
    }
    return json.dumps(statement, indent=2, sort_keys=True).encode()


def _pae(payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding of an in-toto payload."""
    head = f"DSSEv1 {len(PAYLOAD_TYPE)} {PAYLOAD_TYPE} {len(payload)} ".encode()
    return head + payload


def sign_bytes(key: PrivateKey, data: bytes) -> bytes:
    """Sign ``data`` with an Ed25519 key, or ECDSA with the curve's matching SHA-2."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    pub = key.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey):  # pragma: no cover - typing
        raise ConfigurationError("unsupported key")
    return key.sign(data, ec.ECDSA(_ec_hash(pub)))


def verify_bytes(key: PublicKey, data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``key``'s signature of ``data``."""
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        else:
            key.verify(signature, data, ec.ECDSA(_ec_hash(key)))
    except InvalidSignature:
        return False
    return True


def sign_manifest(
    model_name: str, files: Mapping[str, str], key: PrivateKey, *, ignore: Iterable[str] = ()
) -> dict[str, Any]:
    """Sign a manifest and return the Sigstore bundle as a JSON-ready dict."""
    payload = _statement(model_name, files, ignore)
    pub = key.public_key()
    raw = sign_bytes(key, _pae(payload))
    return {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": public_key_hint(pub)}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(raw).decode(), "keyid": ""}],
        },
    }


def _default_signature_path(model: Path) -> Path:
    return model / SIGNATURE_NAME if model.is_dir() else model.with_name(model.name + ".sig")


def sign(
    path: str | os.PathLike[str], key: PrivateKey | str | os.PathLike[str], *,
    out: str | os.PathLike[str] | None = None, password: bytes | None = None,
) -> Path:
    """Sign a model file or folder; write the bundle and return its path.

    The bundle goes to ``out``, else to ``<folder>/model.sig`` for a folder (which is left out
    of the manifest) or ``<file>.sig`` beside a file. ``key`` is a private key or a PEM path.
    """
    model = Path(path)
    private = load_private_key(key, password=password)
    sig_path = Path(out) if out is not None else _default_signature_path(model)
    ignore: list[str] = []
    if model.is_dir():
        try:
            ignore.append(sig_path.resolve().relative_to(model.resolve()).as_posix())
        except ValueError:
            pass
    files = manifest_of(model, ignore=ignore)
    bundle = sign_manifest(model.resolve().name, files, private, ignore=ignore)
    atomic_write(sig_path, json.dumps(bundle, indent=2).encode(), mode=0o644)
    return sig_path


def load_bundle(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a signature bundle (a JSON object) from a regular file; SignatureError if it is not
    one."""
    try:
        bundle = json.loads(read_small(path))
    except (FileNotFoundError, InputError):
        raise
    except (OSError, ValueError) as exc:
        raise SignatureError(f"cannot read signature {path}: {exc}") from exc
    if not isinstance(bundle, dict):
        raise SignatureError(f"signature {path} is not a JSON object: a malformed bundle")
    return bundle


def _decode_bundle(bundle: Mapping[str, Any]) -> tuple[bytes, bytes, str]:
    try:
        if bundle["mediaType"] != BUNDLE_MEDIA_TYPE:
            raise SignatureError(
                f"unsupported bundle media type {bundle['mediaType']!r};"
                f" expected {BUNDLE_MEDIA_TYPE}"
            )
        env = bundle["dsseEnvelope"]
        if env["payloadType"] != PAYLOAD_TYPE:
            raise SignatureError(f"unexpected DSSE payload type {env['payloadType']!r}")
        payload = base64.b64decode(env["payload"], validate=True)
        sig = base64.b64decode(env["signatures"][0]["sig"], validate=True)
        material = bundle.get("verificationMaterial") or {}
        hint = str((material.get("publicKey") or {}).get("hint") or "")
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        if isinstance(exc, SignatureError):
            raise
        raise SignatureError(f"malformed signature bundle: {exc!r}") from exc
    return payload, sig, hint


def verify_bundle(
    bundle: Mapping[str, Any], public_key: PublicKey | str | os.PathLike[str]
) -> tuple[str, dict[str, str], list[str]]:
    """Check the bundle's signature and return ``(model_name, signed files, ignore_paths)``.

    Raises :class:`SignatureError` if the key does not match, the signature is invalid or the
    statement is inconsistent.
    """
    pub = load_public_key(public_key)
    payload, sig, hint = _decode_bundle(bundle)
    if hint and hint != public_key_hint(pub):
        raise SignatureError("the signature was made with another key than the public key given")
    if not verify_bytes(pub, _pae(payload), sig):
        raise SignatureError(
            "the signature does not verify: the statement or the signature was altered")
    try:
        statement = json.loads(payload)
        if statement["_type"] != STATEMENT_TYPE or statement["predicateType"] != PREDICATE_TYPE:
            raise SignatureError(
                f"unsupported statement {statement['_type']!r} / {statement['predicateType']!r}"
            )
        (subject,) = statement["subject"]
        pred = statement["predicate"]
        files = {}
        for r in pred["resources"]:
            if r.get("algorithm", "sha256") != "sha256":
                raise SignatureError(f"unsupported digest algorithm {r['algorithm']!r}")
            files[str(r["name"])] = str(r["digest"]).lower()
        ignore = [str(p) for p in pred.get("serialization", {}).get("ignore_paths", [])]
        name = str(subject["name"])
        expected = subject["digest"]["sha256"]
        # model-signing's subject digest runs over the resources in listed order
        h = hashlib.sha256()
        for r in pred["resources"]:
            h.update(bytes.fromhex(r["digest"]))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, SignatureError):
            raise
        raise SignatureError(f"malformed signed statement: {exc!r}") from exc
    if h.hexdigest() != expected:
        raise SignatureError("the statement's subject digest does not match its resources")
    return name, files, ignore


def compare_manifests(signed: Mapping[str, str], actual: Mapping[str, str]) -> VerifyResult:
    """Name the extra, missing and changed files between a signed and an actual manifest."""
    extra = tuple(sorted(set(actual) - set(signed)))
    missing = tuple(sorted(set(signed) - set(actual)))
    changed = tuple(sorted(n for n in set(signed) & set(actual) if signed[n] != actual[n]))
    ok = not (extra or missing or changed)
    return VerifyResult(
        ok=ok, extra=extra, missing=missing, changed=changed,
        reason="" if ok else "the model differs from what was signed", files=dict(signed),
    )


def verify(
    path: str | os.PathLike[str], public_key: PublicKey | str | os.PathLike[str], *,
    signature: str | os.PathLike[str] | None = None, strict: bool = True,
) -> VerifyResult:
    """Verify a model file or folder against its signature bundle and a public key.

    The files are hashed again and compared with the signed manifest. In ``strict`` mode
    (the default) any failure raises :class:`SignatureError` naming the changed, missing and
    extra files; otherwise the :class:`VerifyResult` says what failed.
    """
    model = Path(path)
    sig_path = Path(signature) if signature is not None else _default_signature_path(model)
    bundle = load_bundle(sig_path)
    try:
        name, signed, ignore = verify_bundle(bundle, public_key)
    except SignatureError as exc:
        if strict:
            raise
        return VerifyResult(ok=False, reason=str(exc))
    if model.is_dir():
        try:
            ignore.append(sig_path.resolve().relative_to(model.resolve()).as_posix())
        except ValueError:
            pass
    result = compare_manifests(signed, manifest_of(model, ignore=ignore))
    result = VerifyResult(
        ok=result.ok, extra=result.extra, missing=result.missing, changed=result.changed,
        reason=result.reason, model_name=name, files=result.files,
    )
    if strict and not result.ok:
        raise SignatureError(f"{model}: {result.describe()}")
    return result


def atomic_write(path: Path, data: bytes, *, mode: int, exclusive: bool = False) -> None:
    """Write through a temporary file; ``exclusive`` links it into place, never replacing
    anything (a concurrent writer or a link at ``path`` makes it fail)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise ConfigurationError(f"{path} already exists; choose a new path") from None
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
