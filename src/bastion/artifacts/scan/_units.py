"""Scans of many files as units of work: local folders or S3 prefixes, on any executor.

:func:`scan_targets` lists the files (a folder's files, or every object under
``s3://bucket/prefix``), groups them into batches (units of work for an
:class:`~bastion.audit.executor.Executor`: a Ray cluster, a process pool, or this process)
and gathers one :class:`~bastion.artifacts.scan.FileScan` per file, in the listing's order, as
a local scan of the same files would. An S3 object is read on the worker through ranged GETs
(:class:`S3Object`, a seekable stream): the scanner skips tensor bytes instead of reading them,
so a multi-gigabyte checkpoint is neither downloaded whole nor ever passes through the driver.

S3 URLs take the registry's form: ``s3://BUCKET/PREFIX?endpoint_url=URL&region=REGION``;
credentials come from the AWS environment of the process that reads (never the URL).

>>> import os, pickle, tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     with open(os.path.join(d, "a.pkl"), "wb") as f:
...         pickle.dump({"w": [1.0]}, f)
...     [s.verdict.value for s in scan_targets([d]).files]
['clean']
"""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from bastion.artifacts.scan._scanner import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_DEPTH,
    _Context,
    _files_under,
    scan_path,
    scan_stream,
)
from bastion.artifacts.scan._stream import Budget
from bastion.artifacts.scan._types import FileScan, ScanReport, combine
from bastion.errors import ConfigurationError, InputError

__all__ = ["S3Location", "S3Object", "is_s3", "list_s3", "scan_targets"]

#: A batch (one unit of work) holds at most this many files ...
BATCH_FILES = 16
#: ... or this many bytes of files, whichever comes first (a larger file is a batch alone).
BATCH_BYTES = 1 << 30
#: An S3 object is fetched in aligned blocks of this size; the last few are kept.
_BLOCK = 256 << 10
_CACHED = 8
#: The buffer in front of it (small: the blocks are the read-ahead).
_READ_AHEAD = 64 << 10


def is_s3(target: str | os.PathLike[str]) -> bool:
    """Whether ``target`` names an S3 prefix (``s3://...``)."""
    return isinstance(target, str) and target.startswith("s3://")


@dataclass(frozen=True)
class S3Location:
    """A bucket, a key or prefix, and where the S3 service is (``None``: AWS)."""

    bucket: str
    key: str
    endpoint_url: str | None = None
    region: str | None = None

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """``s3://BUCKET/PREFIX[?endpoint_url=...&region=...]``.

        >>> S3Location.parse("s3://models/team/a?endpoint_url=http://127.0.0.1:9000")
        S3Location(bucket='models', key='team/a', endpoint_url='http://127.0.0.1:9000', region=None)
        """
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise InputError(f"{url!r} is not an S3 URL: give s3://BUCKET/PREFIX")
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        unknown = set(query) - {"endpoint_url", "region"}
        if unknown:
            raise InputError(
                f"unknown S3 URL parameter(s) {sorted(unknown)}; accepted: endpoint_url, region"
                " (credentials come from the AWS environment, never the URL)"
            )
        return cls(
            parsed.netloc, parsed.path.lstrip("/"), query.get("endpoint_url"), query.get("region")
        )

    def url(self, key: str | None = None) -> str:
        """The ``s3://bucket/key`` name a scan reports (without the service's address)."""
        return f"s3://{self.bucket}/{self.key if key is None else key}"

    def client(self) -> Any:
        """A boto3 S3 client for this service (credentials from the environment)."""
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigurationError("scanning S3 needs boto3: pip install boto3") from exc
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region or os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            config=Config(retries={"max_attempts": 5, "mode": "standard"}),
        )


def _s3_errors() -> tuple[type[Exception], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


def list_s3(location: S3Location) -> list[tuple[str, int]]:
    """Every object under the prefix as ``(key, size)``, sorted by key (folders' markers,
    keys ending in ``/``, left out)."""
    out: list[tuple[str, int]] = []
    try:
        pages = (
            location.client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=location.bucket, Prefix=location.key)
        )
        for page in pages:
            out.extend(
                (o["Key"], int(o["Size"]))
                for o in page.get("Contents", [])
                if not o["Key"].endswith("/")
            )
    except _s3_errors() as exc:
        raise InputError(
            f"cannot list {location.url()} at {location.endpoint_url or 'AWS'}: {exc}; check "
            "the URL, the credentials (AWS_ACCESS_KEY_ID...) and that the bucket exists"
        ) from exc
    return sorted(out)


class S3Object(io.RawIOBase):
    """A seekable, read-only stream over one S3 object, read through ranged GETs.

    The object is fetched in aligned blocks of ``_BLOCK`` bytes (a run of missing blocks in one
    request), and the last ``_CACHED`` blocks are kept, so that the scanner's habit of reading
    a header, seeking back and reading it again costs no second request; the bytes it skips
    (tensor data) are never fetched.
    """

    def __init__(self, client: Any, bucket: str, key: str, size: int) -> None:
        super().__init__()
        self._client, self._bucket, self._key = client, bucket, key
        self._size, self._pos = int(size), 0
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self.fetched = 0  # bytes requested from S3 so far

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise OSError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def _fetch(self, first: int, last: int) -> None:
        """Blocks ``first..last`` (inclusive) into the cache, in one ranged GET."""
        start, stop = first * _BLOCK, min((last + 1) * _BLOCK, self._size)
        try:
            body = self._client.get_object(
                Bucket=self._bucket, Key=self._key, Range=f"bytes={start}-{stop - 1}"
            )["Body"]
            data = body.read()
        except _s3_errors() as exc:
            raise OSError(f"cannot read s3://{self._bucket}/{self._key}: {exc}") from exc
        if len(data) != stop - start:
            raise OSError(f"s3://{self._bucket}/{self._key} changed while it was scanned")
        self.fetched += len(data)
        for i in range(first, last + 1):
            self._blocks[i] = data[(i - first) * _BLOCK : (i - first + 1) * _BLOCK]
            self._blocks.move_to_end(i)
        while len(self._blocks) > max(_CACHED, last - first + 1):
            self._blocks.popitem(last=False)

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        n = min(len(view), self._size - self._pos)
        if n <= 0:
            return 0
        first, last = self._pos // _BLOCK, (self._pos + n - 1) // _BLOCK
        missing = [i for i in range(first, last + 1) if i not in self._blocks]
        if missing:
            self._fetch(missing[0], missing[-1])
        data = b"".join(self._blocks[i] for i in range(first, last + 1))
        offset = self._pos - first * _BLOCK
        view[:n] = data[offset : offset + n]
        self._pos += n
        return n


@dataclass(frozen=True)
class _Options:
    max_depth: int
    max_bytes: int
    s3: S3Location | None


def _scan_batch(options: _Options, batch: tuple[tuple[str, int], ...]) -> list[FileScan]:
    """One unit of work: scan each file of ``batch`` (local paths, or keys of ``options.s3``)."""
    if options.s3 is None:
        return [
            scan_path(p, max_depth=options.max_depth, max_bytes=options.max_bytes) for p, _ in batch
        ]
    s3, client = options.s3, options.s3.client()
    out = []
    for key, size in batch:
        name = s3.url(key)
        raw = S3Object(client, s3.bucket, key, size)
        try:
            with io.BufferedReader(raw, buffer_size=_READ_AHEAD) as f:
                ctx = _Context(options.max_depth, Budget(options.max_bytes))
                out.append(scan_stream(f, name, ctx, 0, (key.rsplit("/", 1)[-1],)))
        except OSError as exc:
            out.append(combine(name, "unknown", [], error=f"cannot read: {exc}"))
    return out


def _batches(files: Sequence[tuple[str, int]]) -> list[tuple[tuple[str, int], ...]]:
    out: list[tuple[tuple[str, int], ...]] = []
    current: list[tuple[str, int]] = []
    size = 0
    for item in files:
        if current and (len(current) >= BATCH_FILES or size + item[1] > BATCH_BYTES):
            out.append(tuple(current))
            current, size = [], 0
        current.append(item)
        size += item[1]
    if current:
        out.append(tuple(current))
    return out


def scan_targets(
    targets: Sequence[str | os.PathLike[str]],
    *,
    executor: Any = None,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_bytes: int = DEFAULT_MAX_BYTES,
    strict: bool = False,
) -> ScanReport:
    """Scan local files and folders and S3 prefixes, batches of files as units of work on
    ``executor`` (default in-process); the report lists the files in the order a local
    :func:`~bastion.artifacts.scan.scan_paths` would (see the module docstring). A batch that
    fails on the workers (a worker that keeps dying) makes its files ``error``, never clean."""
    from bastion.audit.executor import InProcessExecutor, UnitFailed

    if max_depth < 0:
        raise ConfigurationError(f"max_depth must be >= 0, got {max_depth}")
    if max_bytes <= 0:
        raise ConfigurationError(f"max_bytes must be > 0, got {max_bytes}")
    runner = executor or InProcessExecutor()
    files: list[FileScan] = []
    for target in targets:
        if is_s3(target):
            location = S3Location.parse(str(target))
            listing = list_s3(location)
            if not listing:
                raise InputError(f"no objects under {location.url()}: check the bucket and prefix")
        else:
            p = Path(target)
            if not p.exists():
                raise InputError(f"no such file or folder: {p}")
            location = None
            listing = [(str(q), q.stat().st_size) for q in (_files_under(p) if p.is_dir() else [p])]
        options = _Options(max_depth, max_bytes, location)
        batches = _batches(listing)
        parts = runner.map(_scan_batch, batches, shared=options, errors="return")
        for batch, part in zip(batches, parts, strict=True):
            if isinstance(part, UnitFailed):  # its worker kept dying: those files are errors
                names = [location.url(k) if location else k for k, _ in batch]
                files.extend(combine(n, "unknown", [], error=part.cause) for n in names)
            else:
                files.extend(part)
    return ScanReport(tuple(files), strict=strict)
