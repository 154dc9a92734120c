"""Envelope encryption of artifacts and data sets at rest (AES-256-GCM, streaming).

Each object gets a fresh 256-bit *data key*; the data key is wrapped (RFC 3394 AES key wrap)
by a 256-bit *key-encryption key* (KEK) read from a key file or the environment, so rotating
the KEK only rewrites headers. The plaintext is cut into chunks, each sealed with AES-256-GCM
under the data key, so a file larger than memory streams through.

File layout::

    b"BSTNENC" | version (1 byte) | header length (4 bytes, big-endian) | header JSON
    chunk 0 ciphertext + 16-byte tag | chunk 1 ... | final chunk (may be shorter, even empty)

The header JSON holds ``alg``, ``wrap``, ``kek_id`` (a fingerprint of the KEK),
``wrapped_key``, ``nonce_prefix``, ``chunk_size`` and the caller's ``metadata``. Chunk *i* uses
nonce ``nonce_prefix (8 bytes) || i (4 bytes)`` and is authenticated together with
``SHA-256(magic..header) || i (8 bytes) || final flag (1 byte)``: editing the header or
metadata, reordering, dropping or appending chunks, or truncating the file at any point makes
decryption fail with :class:`~bastion.errors.DecryptionError` (the STREAM construction of
Hoang, Reyhanitabar, Rogaway and Vizár, https://eprint.iacr.org/2015/189). Output is written to
a temporary file and renamed only once every chunk has been authenticated; on Linux that file
is unnamed until then (``O_TMPFILE``), so a decryption killed half-way leaves no partial
plaintext on disk, and elsewhere the next decryption to the same path removes the leftover.

Example:
    >>> import os, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> kek = os.urandom(32)
    >>> _ = (d / "data.csv").write_text("a,b\\n1,2\\n")
    >>> encrypt_file(d / "data.csv", d / "data.enc", kek, metadata={"owner": "ml-team"}).name
    'data.enc'
    >>> decrypt_file(d / "data.enc", d / "out.csv", kek)
    {'owner': 'ml-team'}
    >>> (d / "out.csv").read_text()
    'a,b\\n1,2\\n'
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from bastion.errors import ConfigurationError, DecryptionError

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAGIC",
    "VERSION",
    "decrypt_file",
    "decrypt_stream",
    "encrypt_file",
    "encrypt_stream",
    "generate_kek",
    "kek_id",
    "load_kek",
    "read_header",
]

MAGIC = b"BSTNENC"
VERSION = 1
DEFAULT_CHUNK_SIZE = 1 << 20
_TAG = 16
_MAX_HEADER = 1 << 20
_MAX_CHUNK = 64 << 20


def kek_id(kek: bytes) -> str:
    """A short public fingerprint of a KEK (not the key), stored in headers to name it."""
    return hashlib.sha256(b"bastion-kek-id\x00" + kek).hexdigest()[:16]


def _check_kek(kek: bytes) -> bytes:
    if not isinstance(kek, bytes | bytearray) or len(kek) != 32:
        raise ConfigurationError("the key-encryption key must be 32 bytes (AES-256)")
    return bytes(kek)


def _parse_key_text(raw: bytes, source: str) -> bytes:
    if len(raw) == 32:
        return raw
    text = raw.strip()
    candidates: list[bytes] = []
    try:
        candidates.append(bytes.fromhex(text.decode("ascii")))
    except (ValueError, UnicodeDecodeError):
        pass
    try:
        candidates.append(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error):
        pass
    for key in candidates:
        if len(key) == 32:
            return key
    raise ConfigurationError(
        f"{source} does not hold a 256-bit key: give 32 raw bytes, 64 hex digits or base64 of"
        " 32 bytes (create one with generate_kek or `bastion keygen --kind aes-256`)"
    )


def load_kek(key_file: str | os.PathLike[str] | None = None, env: str = "BASTION_KEK") -> bytes:
    """Read the 32-byte KEK from ``key_file`` or, if none is given, from the variable ``env``.

    A key file holds 32 raw bytes, or 64 hex digits, or base64; the variable hex or base64.
    """
    if key_file is not None:
        return _parse_key_text(Path(key_file).read_bytes(), f"key file {key_file}")
    value = os.environ.get(env)
    if not value:
        raise ConfigurationError(
            f"no key-encryption key: pass a key file or set the environment variable {env}"
        )
    return _parse_key_text(value.encode(), f"environment variable {env}")


def generate_kek(path: str | os.PathLike[str]) -> Path:
    """Write a new random KEK (base64 text, mode 0600) to ``path``; refuse to overwrite."""
    out = Path(path)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(base64.b64encode(os.urandom(32)) + b"\n")
    return out


def _aad(header_hash: bytes, index: int, final: bool) -> bytes:
    return header_hash + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")


def _nonce(prefix: bytes, index: int) -> bytes:
    if index >= 1 << 32:
        raise ConfigurationError("object too large for this chunk size; use a larger chunk_size")
    return prefix + index.to_bytes(4, "big")


def encrypt_stream(
    src: BinaryIO, dst: BinaryIO, kek: bytes, *, metadata: Mapping[str, Any] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> None:
    """Encrypt ``src`` to ``dst`` (binary streams), one chunk in memory at a time."""
    kek = _check_kek(kek)
    if not 1 <= chunk_size <= _MAX_CHUNK:
        raise ConfigurationError(f"chunk_size must be in [1, {_MAX_CHUNK}], got {chunk_size}")
    data_key = AESGCM.generate_key(bit_length=256)
    prefix = os.urandom(8)
    header = {
        "alg": "AES-256-GCM",
        "wrap": "AES-KW",
        "kek_id": kek_id(kek),
        "wrapped_key": base64.b64encode(aes_key_wrap(kek, data_key)).decode(),
        "nonce_prefix": base64.b64encode(prefix).decode(),
        "chunk_size": chunk_size,
        "metadata": dict(metadata or {}),
    }
    try:
        header_bytes = json.dumps(header, sort_keys=True).encode()
    except TypeError as exc:
        raise ConfigurationError(f"metadata must be JSON-serialisable: {exc}") from exc
    preamble = MAGIC + bytes([VERSION]) + len(header_bytes).to_bytes(4, "big") + header_bytes
    header_hash = hashlib.sha256(preamble).digest()
    dst.write(preamble)
    aes = AESGCM(data_key)
    index = 0
    current = src.read(chunk_size)
    while True:
        following = src.read(chunk_size) if len(current) == chunk_size else b""
        final = not following
        dst.write(aes.encrypt(_nonce(prefix, index), current, _aad(header_hash, index, final)))
        if final:
            break
        current, index = following, index + 1


def read_header(src: BinaryIO) -> tuple[dict[str, Any], bytes]:
    """Read and parse the header of an encrypted stream; return ``(header, header_hash)``."""
    head = src.read(len(MAGIC) + 5)
    if len(head) < len(MAGIC) + 5 or head[: len(MAGIC)] != MAGIC:
        raise DecryptionError("not a bastion encrypted object (bad magic)")
    if head[len(MAGIC)] != VERSION:
        raise DecryptionError(f"unsupported encryption format version {head[len(MAGIC)]}")
    length = int.from_bytes(head[len(MAGIC) + 1:], "big")
    if length > _MAX_HEADER:
        raise DecryptionError("header too large: the object is corrupt")
    header_bytes = src.read(length)
    if len(header_bytes) != length:
        raise DecryptionError("truncated header")
    try:
        header = json.loads(header_bytes)
        if header["alg"] != "AES-256-GCM" or header["wrap"] != "AES-KW":
            raise DecryptionError(f"unsupported algorithms {header['alg']}/{header['wrap']}")
        int(header["chunk_size"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DecryptionError(f"malformed header: {exc!r}") from exc
    return header, hashlib.sha256(head + header_bytes).digest()


def decrypt_stream(src: BinaryIO, dst: BinaryIO, kek: bytes) -> dict[str, Any]:
    """Decrypt ``src`` into ``dst`` and return the authenticated metadata.

    Each chunk is authenticated before it is written; a failure part-way leaves what was
    written in ``dst`` (use :func:`decrypt_file` for all-or-nothing output).
    """
    kek = _check_kek(kek)
    header, header_hash = read_header(src)
    try:
        data_key = aes_key_unwrap(kek, base64.b64decode(header["wrapped_key"], validate=True))
        prefix = base64.b64decode(header["nonce_prefix"], validate=True)
    except InvalidUnwrap as exc:
        hint = "" if header.get("kek_id") == kek_id(kek) else (
            f" (the object was encrypted under key id {header.get('kek_id')}, "
            f"this key is {kek_id(kek)})")
        raise DecryptionError(f"wrong key-encryption key{hint}") from exc
    except (ValueError, binascii.Error) as exc:
        raise DecryptionError(f"malformed header: {exc!r}") from exc
    if len(prefix) != 8:
        raise DecryptionError("malformed header: bad nonce prefix")
    size = int(header["chunk_size"]) + _TAG
    if not _TAG < size <= _MAX_CHUNK + _TAG:
        raise DecryptionError("malformed header: bad chunk size")
    aes = AESGCM(data_key)
    index = 0
    current = src.read(size)
    while True:
        if len(current) < _TAG:
            raise DecryptionError("the object is truncated (a chunk is missing)")
        following = src.read(size) if len(current) == size else b""
        final = not following
        try:
            plain = aes.decrypt(_nonce(prefix, index), current, _aad(header_hash, index, final))
        except InvalidTag as exc:
            raise DecryptionError(
                f"chunk {index} failed authentication: the object was altered, truncated or"
                " reordered, or its header/metadata was edited"
            ) from exc
        dst.write(plain)
        if final:
            break
        current, index = following, index + 1
    metadata = header.get("metadata", {})
    return dict(metadata) if isinstance(metadata, dict) else {}


def encrypt_file(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], kek: bytes, *,
    metadata: Mapping[str, Any] | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Path:
    """Encrypt the file ``src`` to ``dst`` (written to a temporary file, then renamed)."""
    out = Path(dst)
    with open(src, "rb") as fin, _AtomicFile(out) as fout:
        encrypt_stream(fin, fout, kek, metadata=metadata, chunk_size=chunk_size)
    return out


def decrypt_file(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], kek: bytes
) -> dict[str, Any]:
    """Decrypt ``src`` to ``dst``; ``dst`` appears only if the whole object authenticates."""
    with open(src, "rb") as fin, _AtomicFile(Path(dst)) as fout:
        return decrypt_stream(fin, fout, kek)


class _AtomicFile:
    """A binary file that appears at ``path`` only once written completely.

    Where the system allows it (Linux ``O_TMPFILE``), the bytes go to an *unnamed* file in the
    destination folder, linked in under a temporary name and renamed over ``path`` only at the
    end: a crash -- even SIGKILL or a power cut -- while writing leaves nothing behind, so no
    partial plaintext can linger. Elsewhere (or where the unnamed file cannot be linked, as in
    some sandboxes) a named ``.NAME.*.tmp`` file (mode 0600) is used; leftovers of a crashed
    run writing the same ``path`` are removed when the next write to it starts.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tmp: str | None = None
        self._fh: BinaryIO | None = None

    def _stale(self) -> None:
        for old in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            with contextlib.suppress(OSError):
                if old.is_file() and not old.is_symlink() and old.stat().st_uid == os.getuid():
                    old.unlink()

    def __enter__(self) -> BinaryIO:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._stale()
        try:
            fd = os.open(self.path.parent, os.O_TMPFILE | os.O_RDWR, 0o600)  # unnamed
        except (AttributeError, OSError):
            fd, self._tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.",
                                             suffix=".tmp")
        self._fh = os.fdopen(fd, "w+b")
        return self._fh

    def _name_unnamed(self, fh: BinaryIO) -> str:
        """Give the finished unnamed file a temporary name (a link, or else a copy)."""
        name = self.path.parent / f".{self.path.name}.{uuid.uuid4().hex}.tmp"
        try:
            os.link(f"/proc/self/fd/{fh.fileno()}", name)
        except OSError:
            fh.seek(0)
            with open(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
                shutil.copyfileobj(fh, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
        return str(name)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        fh = self._fh
        if fh is None:
            return
        try:
            if exc_type is None:
                fh.flush()
                os.fsync(fh.fileno())
                if self._tmp is None:
                    self._tmp = self._name_unnamed(fh)
            fh.close()
            if exc_type is None and self._tmp is not None:
                os.replace(self._tmp, self.path)
        finally:
            if self._tmp is not None and (exc_type is not None or os.path.exists(self._tmp)):
                Path(self._tmp).unlink(missing_ok=True)
