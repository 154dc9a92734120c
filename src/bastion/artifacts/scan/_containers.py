"""Containers: zip (read leniently, the way torch reads it), tar, compressed streams and 7z.

Zip archives are parsed here rather than with :mod:`zipfile`: ``zipfile`` refuses archives
that torch loads (a wrong CRC, general-purpose flag bits, a local header name that differs
from the central directory), and a scanner that gives up on them lets a payload through. The
reader takes member offsets from the central directory like torch does, and also walks the
local headers, so an entry present in only one of them is scanned too. Members are exposed
as seekable windows over the file when stored and decompressed (within the byte budget) when
deflated, so tensor storages are never read.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import struct
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import IO, Any

from bastion.artifacts.scan._stream import Budget, ScanLimitError, Window, stream_size

__all__ = ["ZipEntry", "decompress", "is_tar", "iter_7z", "iter_tar", "list_zip",
           "open_zip_entry"]

_EOCD = b"PK\x05\x06"
_EOCD64_LOCATOR = b"PK\x06\x07"
_CENTRAL = b"PK\x01\x02"
_LOCAL = b"PK\x03\x04"
_CHUNK = 1 << 20
_SPOOL = 64 << 20


class ContainerError(Exception):
    """A container is malformed past what the lenient reader can recover."""


@dataclass(frozen=True)
class ZipEntry:
    """One zip member, as named by the central directory and by its local header."""

    name: str
    local_name: str
    method: int
    flags: int
    compressed_size: int
    size: int
    header_offset: int
    data_offset: int
    in_central: bool
    #: other central-directory records for the same local header (zipfile and torch each read
    #: it under every name), and what the local header itself says about the compression
    aliases: tuple[str, ...] = ()
    local_method: int | None = None
    local_sizes: tuple[int, int] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        out = [self.name]
        for n in (self.local_name, *self.aliases):
            if n not in out:
                out.append(n)
        return tuple(out)

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & 0x01)

    def disagreement(self) -> str | None:
        """How the central directory and the local header disagree on reading the data."""
        if self.local_method is not None and self.local_method != self.method:
            return (f"the central directory says compression method {self.method} and the local "
                    f"header {self.local_method}")
        if self.local_sizes is not None and not self.flags & 0x08:
            csize, usize = self.local_sizes
            if (csize, usize) != (self.compressed_size, self.size):
                return (f"the central directory gives sizes {self.compressed_size}/{self.size} "
                        f"and the local header {csize}/{usize}")
        if self.method == 0 and self.compressed_size != self.size:
            return (f"it is stored without compression but claims {self.compressed_size} "
                    f"stored bytes for {self.size} bytes of data")
        return None


def _decode_name(raw: bytes, flags: int) -> str:
    if flags & 0x800:
        return raw.decode("utf-8", "replace")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp437")


def _zip64_extra(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    i = 0
    while i + 4 <= len(extra):
        tag, ln = struct.unpack_from("<HH", extra, i)
        body = extra[i + 4 : i + 4 + ln]
        if tag == 0x0001:
            vals = [v for (v,) in struct.iter_unpack("<Q", body[: len(body) // 8 * 8])]
            if usize == 0xFFFFFFFF and vals:
                usize = vals.pop(0)
            if csize == 0xFFFFFFFF and vals:
                csize = vals.pop(0)
            if offset == 0xFFFFFFFF and vals:
                offset = vals.pop(0)
        i += 4 + ln
    return usize, csize, offset


def _read_at(f: IO[bytes], offset: int, n: int) -> bytes:
    f.seek(offset)
    return f.read(n)


def _central_directory(f: IO[bytes], size: int) -> tuple[int, int, int] | None:
    """(offset, size, shift) of the central directory, or None when there is no end record.

    ``shift`` is what zipfile adds to every offset: the bytes before the archive (a
    self-extracting stub, or any junk), found as the end record's position minus the
    directory's size and stated offset.
    """
    tail_len = min(size, 65535 + 22)
    tail = _read_at(f, size - tail_len, tail_len)
    idx = tail.rfind(_EOCD)
    if idx < 0 or idx + 22 > len(tail):
        return None
    (_, _, _, _, _, cd_size, cd_offset, _) = struct.unpack_from("<4sHHHHIIH", tail, idx)
    eocd_pos = size - tail_len + idx
    end = eocd_pos
    if eocd_pos >= 20:  # zip64 structures count whenever present, as in zipfile
        loc = _read_at(f, eocd_pos - 20, 20)
        if len(loc) == 20 and loc[:4] == _EOCD64_LOCATOR and eocd_pos >= 76:
            # zipfile reads the zip64 record just before the locator, not where it points
            rec = _read_at(f, eocd_pos - 76, 56)
            if len(rec) == 56 and rec[:4] == b"PK\x06\x06":
                cd_size, cd_offset = struct.unpack_from("<QQ", rec, 40)
                end = eocd_pos - 20 - 56
    shift = end - cd_size - cd_offset
    if shift < 0:
        return None
    return cd_offset + shift, cd_size, shift


def _local_header(f: IO[bytes], offset: int) -> tuple[str, int, int, int, int, int] | None:
    head = _read_at(f, offset, 30)
    if len(head) != 30 or head[:4] != _LOCAL:
        return None
    (_, _, flags, method, _, _, _, csize, usize, nlen, xlen) = struct.unpack(
        "<4sHHHHHIIIHH", head
    )
    raw = f.read(nlen)
    extra = f.read(xlen)
    usize, csize, _ = _zip64_extra(extra, usize, csize, 0)
    return _decode_name(raw, flags), flags, method, csize, usize, offset + 30 + nlen + xlen


def list_zip(f: IO[bytes]) -> list[ZipEntry]:
    """Every member named by the central directory or by a local header."""
    size = stream_size(f)
    if size is None:
        raise ContainerError("a zip archive needs a seekable stream")
    entries: dict[int, ZipEntry] = {}
    others: list[ZipEntry] = []
    cd = _central_directory(f, size)
    if cd is not None:
        cd_offset, cd_size, shift = cd
        data = _read_at(f, cd_offset, cd_size)
        i = 0
        while i + 46 <= len(data) and data[i : i + 4] == _CENTRAL:
            fields = struct.unpack_from("<4sHHHHHHIIIHHHHHII", data, i)
            flags, method = fields[3], fields[4]
            csize, usize = fields[8], fields[9]
            nlen, xlen, clen = fields[10], fields[11], fields[12]
            offset = fields[16]
            name = _decode_name(data[i + 46 : i + 46 + nlen], flags)
            extra = data[i + 46 + nlen : i + 46 + nlen + xlen]
            usize, csize, offset = _zip64_extra(extra, usize, csize, offset)
            offset += shift
            i += 46 + nlen + xlen + clen
            local = _local_header(f, offset)
            if local is None:
                raise ContainerError(f"central directory points to no local header for {name!r}")
            entry = ZipEntry(name, local[0], method, flags, csize, usize, offset, local[5], True,
                             local_method=local[2], local_sizes=(local[3], local[4]))
            same = entries.get(offset)
            if same is None:
                entries[offset] = entry
            elif (same.method, same.compressed_size, same.size) == (method, csize, usize):
                entries[offset] = replace(same, aliases=(*same.aliases, name))
            else:
                # two records read the same bytes differently: scan both readings
                others.append(entry)
        if i < len(data):
            raise ContainerError(f"the central directory is corrupt at byte {i} of {len(data)}: "
                                 "zip readers may list members the scanner cannot")
    for entry in _walk_local_headers(f, size, entries):
        entries.setdefault(entry.header_offset, entry)
    if not entries and cd is None:
        raise ContainerError("no zip end record and no local headers")
    return [entries[k] for k in sorted(entries)] + others


def _walk_local_headers(f: IO[bytes], size: int, known: dict[int, ZipEntry]
                        ) -> Iterator[ZipEntry]:
    offset = 0
    while offset + 30 <= size:
        if offset in known:
            # sizes from the central directory: skip the data without reading it
            entry = known[offset]
            offset = entry.data_offset + entry.compressed_size
            if entry.flags & 0x08:
                offset = _skip_descriptor(f, offset)
            continue
        local = _local_header(f, offset)
        if local is None:
            return
        name, flags, method, csize, usize, data_offset = local
        if flags & 0x08 and csize == 0:
            end = _find_descriptor_end(f, data_offset, method, size)
            if end is None:
                return
            csize = end - data_offset
            yield ZipEntry(name, name, method, flags, csize, usize, offset, data_offset, False)
            offset = _skip_descriptor(f, end)
            continue
        yield ZipEntry(name, name, method, flags, csize, usize, offset, data_offset, False)
        offset = data_offset + csize
        if flags & 0x08:
            offset = _skip_descriptor(f, offset)


def _skip_descriptor(f: IO[bytes], offset: int) -> int:
    sig = _read_at(f, offset, 4)
    if sig == b"PK\x07\x08":
        # 16 bytes, or 24 with zip64 sizes: take the one followed by another record
        if _read_at(f, offset + 16, 2) != b"PK" and _read_at(f, offset + 24, 2) == b"PK":
            return offset + 24
        return offset + 16
    if sig[:2] == b"PK":
        return offset
    return offset + 12


def _find_descriptor_end(f: IO[bytes], start: int, method: int, size: int) -> int | None:
    if method == 8:
        d = zlib.decompressobj(-15)
        f.seek(start)
        fed = 0
        while not d.eof:
            chunk = f.read(_CHUNK)
            if not chunk:
                return None
            fed += len(chunk)
            d.decompress(chunk, _CHUNK)
            while d.unconsumed_tail and not d.eof:
                d.decompress(d.unconsumed_tail, _CHUNK)
        return start + fed - len(d.unused_data)
    f.seek(start)
    pos = start
    while pos < size:
        chunk = f.read(_CHUNK + 3)
        idx = chunk.find(b"PK\x07\x08")
        if idx >= 0:
            return pos + idx
        pos += _CHUNK
        f.seek(pos)
    return None


def open_zip_entry(f: IO[bytes], entry: ZipEntry, budget: Budget) -> IO[bytes]:
    """A seekable stream of the member's bytes (CRC and flag bits are not checked)."""
    if entry.encrypted:
        raise ContainerError(f"member {entry.name!r} is encrypted: its content was not inspected")
    why = entry.disagreement()
    if why is not None:
        raise ContainerError(f"member {entry.name!r} is ambiguous ({why}): loaders may read "
                             "different bytes than the scanner, so it was not judged")
    raw = io.BufferedReader(Window(f, entry.data_offset, entry.compressed_size))
    if entry.method == 0:
        return raw
    if entry.method == 8:
        return _spool(_inflate(raw), budget)
    if entry.method == 12:
        return _spool(_stream_decompress(raw, bz2.BZ2Decompressor()), budget)
    if entry.method == 14:
        return _spool(_zip_lzma(raw), budget)
    raise ContainerError(f"member {entry.name!r} uses compression method {entry.method}, "
                         "which the scanner cannot read")


def _zip_lzma(raw: IO[bytes]) -> Iterator[bytes]:
    """LZMA members (method 14), decoded by zipfile's own decompressor (a 4-byte header and
    the raw LZMA properties come first)."""
    return _feed(raw, zipfile.LZMADecompressor())  # type: ignore[attr-defined]


def _inflate(raw: IO[bytes]) -> Iterator[bytes]:
    d = zlib.decompressobj(-15)
    yield from _feed(raw, d)
    yield d.flush()


def _feed(raw: IO[bytes], d: Any) -> Iterator[bytes]:
    while True:
        chunk = raw.read(_CHUNK)
        if not chunk:
            break
        yield d.decompress(chunk)
        if d.eof:
            break


def _stream_decompress(raw: IO[bytes], d: bz2.BZ2Decompressor | lzma.LZMADecompressor
                       ) -> Iterator[bytes]:
    while not d.eof:
        chunk = raw.read(_CHUNK)
        if not chunk:
            break
        yield d.decompress(chunk)


def _spool(chunks: Iterator[bytes], budget: Budget) -> IO[bytes]:
    out = tempfile.SpooledTemporaryFile(max_size=_SPOOL)
    try:
        for chunk in chunks:
            budget.take(len(chunk))
            out.write(chunk)
    except (zlib.error, OSError, EOFError, lzma.LZMAError) as exc:
        out.close()
        raise ContainerError(f"cannot decompress: {exc}") from exc
    except ScanLimitError:
        out.close()
        raise
    out.seek(0)
    return out


def decompress(f: IO[bytes], kind: str, budget: Budget) -> IO[bytes]:
    """Decompress a gzip, bz2, xz, lzma, zlib or lz4 stream (or joblib's old ``ZF`` format)
    into a seekable spool."""
    opener: Any
    if kind == "gzip":
        opener = gzip.GzipFile(fileobj=f, mode="rb")
    elif kind == "bz2":
        opener = bz2.BZ2File(f, mode="rb")
    elif kind in ("xz", "lzma"):
        opener = lzma.LZMAFile(f, mode="rb")
    elif kind == "zlib":
        return _spool(_zlib_chunks(f), budget)
    elif kind == "joblib-zfile":
        # joblib's old format: b"ZF", the length in hex padded to 19 characters, an optional
        # space, then a zlib stream (joblib.numpy_pickle_compat.read_zfile)
        start = f.tell()
        f.read(21)
        if f.read(1) != b" ":
            f.seek(start + 21)
        return _spool(_zlib_chunks(f), budget)
    elif kind == "lz4":
        try:
            import lz4.frame
        except ImportError as exc:
            raise ContainerError("an lz4 stream (joblib writes these with compress='lz4'): "
                                 "install lz4 to scan it; it was not inspected") from exc
        opener = lz4.frame.LZ4FrameFile(f, mode="rb")
    else:
        raise ContainerError(f"unknown compression {kind}")

    def chunks() -> Iterator[bytes]:
        while True:
            chunk = opener.read(_CHUNK)
            if not chunk:
                return
            yield chunk

    return _spool(chunks(), budget)


def _zlib_chunks(f: IO[bytes]) -> Iterator[bytes]:
    d = zlib.decompressobj()
    while not d.eof:
        chunk = f.read(_CHUNK)
        if not chunk:
            raise zlib.error("truncated zlib stream")
        yield d.decompress(chunk)
    yield d.flush()


def is_tar(f: IO[bytes]) -> bool:
    """Whether ``tarfile`` reads a first member from the stream (its header checksum holds)."""
    start = f.tell()
    head = f.read(512)
    f.seek(start)
    # tarfile rejects a header whose checksum field is not octal digits, spaces or NULs
    if len(head) < 512 or head[148:156].strip(b" \x00").strip(b"01234567"):
        return False
    try:
        with tarfile.open(fileobj=f, mode="r:") as tf:
            return tf.next() is not None
    except (tarfile.TarError, OSError, ValueError, EOFError):
        return False
    finally:
        f.seek(start)


def iter_tar(f: IO[bytes], budget: Budget) -> Iterator[tuple[str, IO[bytes] | None, str]]:
    """(name, stream or None, note) for every member of an uncompressed tar."""
    try:
        tf = tarfile.open(fileobj=f, mode="r:")
    except tarfile.TarError as exc:
        raise ContainerError(f"cannot read tar: {exc}") from exc
    with tf:
        try:
            for info in tf:
                if info.isfile():
                    stream = tf.extractfile(info)
                    if stream is not None:
                        yield info.name, stream, ""
                elif info.issym() or info.islnk():
                    yield info.name, None, f"link to {info.linkname}"
        except tarfile.TarError as exc:
            raise ContainerError(f"corrupt tar: {exc}") from exc


def iter_7z(f: IO[bytes], budget: Budget) -> Iterator[tuple[str, io.BytesIO]]:
    """(name, stream) for every file in a 7z archive (needs py7zr)."""
    try:
        import py7zr
        from py7zr.io import BytesIOFactory
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ContainerError("7z archives need py7zr: pip install py7zr") from exc
    try:
        with py7zr.SevenZipFile(f, mode="r") as archive:
            infos = [i for i in archive.list() if not i.is_directory]
            total = sum(int(i.uncompressed or 0) for i in infos)
            budget.take(total)
            limit = max([int(i.uncompressed or 0) for i in infos] + [0]) + 1
            factory = BytesIOFactory(limit)
            archive.extractall(factory=factory)  # noqa: S202 - into memory, not to disk
    except (py7zr.exceptions.ArchiveError, py7zr.exceptions.PasswordRequired, lzma.LZMAError,
            EOFError, OSError, KeyError,
            ValueError, IndexError) as exc:
        raise ContainerError(f"cannot read 7z: {exc}") from exc
    for info in infos:
        product = factory.products.get(info.filename)
        if product is None:
            continue
        product.seek(0, os.SEEK_SET)
        yield info.filename, io.BytesIO(product.read())
