"""Blob storage of the registry: a local folder (``file:///path``) or S3 (``s3://bucket/prefix``).

Blobs are content-addressed (``blobs/sha256/ab/abcdef...``); encrypted blobs live under
``eblobs/`` at a *keyed* address (an HMAC of the plaintext digest under the key-encryption key,
see :meth:`~bastion.artifacts.registry.core.Registry.push`), so listing the bucket does not
tell whether a known model is stored. An upload goes first to a staging key
(``staging/<uuid>``) while its SHA-256 is computed on the bytes actually sent, then moves to
its content address. A push killed before it commits leaves staging keys behind:
:meth:`stale` lists those older than a given age and ``bastion registry gc`` deletes them.

S3 URLs take ``endpoint_url`` and ``region`` as query parameters, e.g.
``s3://models/prod?endpoint_url=http://127.0.0.1:9000``; credentials come from the usual AWS
environment variables or configuration files, never from the URL.
"""

from __future__ import annotations

import builtins
import datetime as dt
import hashlib
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import parse_qs, unquote, urlparse

from bastion.errors import ArtifactError, ConfigurationError

__all__ = ["BlobStorage", "LocalStorage", "S3Storage", "blob_key", "open_storage"]

_CHUNK = 1 << 20


def blob_key(digest: str, *, encrypted: bool = False) -> str:
    """The content address of a blob (of its plaintext digest; ``eblobs/`` when encrypted)."""
    return f"{'eblobs' if encrypted else 'blobs'}/sha256/{digest[:2]}/{digest}"


class BlobStorage(Protocol):
    """What the registry needs from a blob store."""

    url: str

    def stage(self, src: Path) -> tuple[str, str, int]:
        """Upload ``src`` under a new staging key; return ``(key, sha256, size)``."""
        ...

    def commit(self, staging_key: str, key: str) -> str:
        """Move a staged blob to its content address ``key`` (idempotent); return ``key``."""
        ...

    def discard(self, key: str) -> None:
        """Delete a key if it exists."""
        ...

    def exists(self, key: str) -> bool: ...

    def download(self, key: str, dest: BinaryIO) -> None:
        """Stream the blob into ``dest``."""
        ...

    def list(self, prefix: str) -> list[str]: ...

    def stale(self, prefix: str, older_than: float) -> builtins.list[str]:
        """Keys (local: also folders) under ``prefix`` unchanged for ``older_than`` seconds."""
        ...

    def delete_tree(self, key: str) -> None:
        """Delete a key, or everything under it."""
        ...


class _HashingReader:
    """Wrap a binary file and hash what is read from it."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data


class LocalStorage:
    """Blobs in a local folder; writes go through a temporary file and ``os.replace``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ConfigurationError(f"storage key {key!r} escapes the storage root")
        return path

    def stage(self, src: Path) -> tuple[str, str, int]:
        key = f"staging/{uuid.uuid4().hex}"
        dst = self._path(key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            reader = _HashingReader(fin)
            while chunk := reader.read(_CHUNK):
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        return key, reader.sha.hexdigest(), reader.size

    def commit(self, staging_key: str, key: str) -> str:
        dst = self._path(key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._path(staging_key), dst)
        return key

    def discard(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def download(self, key: str, dest: BinaryIO) -> None:
        try:
            with open(self._path(key), "rb") as fh:
                shutil.copyfileobj(fh, dest, _CHUNK)
        except FileNotFoundError as exc:
            raise ArtifactError(f"blob {key} is missing from {self.url}") from exc

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())

    def spool_dir(self) -> Path:
        """A new private folder under ``staging/`` (same file system as the blobs, so a file
        spooled there is committed by a rename, not a second copy)."""
        base = self._path("staging")
        base.mkdir(parents=True, exist_ok=True)
        path = base / f"spool-{uuid.uuid4().hex}"
        path.mkdir(mode=0o700)
        return path

    def key_of(self, path: Path) -> str:
        """The storage key of a file inside the storage folder (a spooled file)."""
        full = path.resolve()
        if self.root.resolve() not in full.parents:
            raise ConfigurationError(f"{path} is not inside the storage folder {self.root}")
        return full.relative_to(self.root.resolve()).as_posix()

    def stale(self, prefix: str, older_than: float) -> builtins.list[str]:
        base = self._path(prefix.rstrip("/"))
        if not base.is_dir():
            return []
        cutoff = time.time() - older_than
        out = []
        for entry in sorted(base.iterdir()):
            newest = entry.lstat().st_mtime
            if entry.is_dir() and not entry.is_symlink():
                for p in entry.rglob("*"):
                    newest = max(newest, p.lstat().st_mtime)
            if newest <= cutoff:
                out.append(entry.relative_to(self.root).as_posix())
        return out

    def delete_tree(self, key: str) -> None:
        path = self._path(key)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


class S3Storage:
    """Blobs in an S3-compatible bucket under ``prefix`` (boto3)."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region: str | None = None) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigurationError("S3 storage needs boto3: pip install boto3") from exc
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}"
        self._client: Any = boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=region or os.environ.get(
                "AWS_DEFAULT_REGION", "us-east-1"),
            config=Config(retries={"max_attempts": 5, "mode": "standard"}),
        )
        from botocore.exceptions import BotoCoreError, ClientError

        self._errors: tuple[type[Exception], ...] = (BotoCoreError, ClientError)
        try:
            self._client.head_bucket(Bucket=bucket)
        except self._errors as exc:
            raise ConfigurationError(
                f"cannot reach bucket {bucket!r} at {endpoint_url or 'AWS'}: {exc}; check the"
                " URL, the credentials (AWS_ACCESS_KEY_ID...) and that the bucket exists"
            ) from exc

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def stage(self, src: Path) -> tuple[str, str, int]:
        key = f"staging/{uuid.uuid4().hex}"
        with open(src, "rb") as fh:
            reader = _HashingReader(fh)
            try:
                self._client.upload_fileobj(reader, self.bucket, self._key(key))
            except self._errors as exc:
                raise ArtifactError(f"upload to {self.url} failed: {exc}") from exc
        return key, reader.sha.hexdigest(), reader.size

    def commit(self, staging_key: str, key: str) -> str:
        try:
            if not self.exists(key):
                self._client.copy({"Bucket": self.bucket, "Key": self._key(staging_key)},
                                  self.bucket, self._key(key))
            self._client.delete_object(Bucket=self.bucket, Key=self._key(staging_key))
        except self._errors as exc:
            raise ArtifactError(f"storing blob {key} in {self.url} failed: {exc}") from exc
        return key

    def discard(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except self._errors as exc:
            raise ArtifactError(f"deleting {key} from {self.url} failed: {exc}") from exc

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise ArtifactError(f"cannot read {key} in {self.url}: {exc}") from exc
        return True

    def download(self, key: str, dest: BinaryIO) -> None:
        try:
            self._client.download_fileobj(self.bucket, self._key(key), dest)
        except self._errors as exc:
            raise ArtifactError(f"blob {key} cannot be read from {self.url}: {exc}") from exc

    def list(self, prefix: str) -> list[str]:
        out: list[str] = []
        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full
            ):
                out.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        except self._errors as exc:
            raise ArtifactError(f"cannot list {self.url}: {exc}") from exc
        return sorted(out)

    def stale(self, prefix: str, older_than: float) -> builtins.list[str]:
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=older_than)
        strip = len(self.prefix) + 1 if self.prefix else 0
        out: builtins.list[str] = []
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(prefix)
            ):
                out.extend(obj["Key"][strip:] for obj in page.get("Contents", [])
                           if obj["LastModified"] <= cutoff)
        except self._errors as exc:
            raise ArtifactError(f"cannot list {self.url}: {exc}") from exc
        return sorted(out)

    def delete_tree(self, key: str) -> None:
        self.discard(key)


def open_storage(url: str | os.PathLike[str]) -> LocalStorage | S3Storage:
    """Open the blob store named by ``url``: ``file:///path``, a plain path, or ``s3://...``."""
    text = os.fspath(url)
    parsed = urlparse(text)
    if parsed.scheme in ("", "file"):
        path = unquote(parsed.path) if parsed.scheme == "file" else text
        if not path:
            raise ConfigurationError(f"storage URL {text!r} has no path")
        return LocalStorage(path)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigurationError(f"storage URL {text!r} has no bucket: s3://BUCKET/PREFIX")
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        unknown = set(query) - {"endpoint_url", "region"}
        if unknown:
            raise ConfigurationError(
                f"unknown S3 URL parameter(s) {sorted(unknown)}; accepted: endpoint_url, region"
                " (credentials come from the AWS environment, never the URL)"
            )
        return S3Storage(parsed.netloc, parsed.path, endpoint_url=query.get("endpoint_url"),
                         region=query.get("region"))
    raise ConfigurationError(
        f"storage URL scheme {parsed.scheme!r} is not supported; use file:///PATH or s3://BUCKET/PREFIX"
    )

