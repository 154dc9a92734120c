"""Bounded, position-tracking byte readers shared by the format and pickle scanners."""

from __future__ import annotations

import io
import os
from typing import IO, Any

__all__ = ["Budget", "Reader", "ScanLimitError", "Truncated", "Window"]

_CHUNK = 1 << 20


class Truncated(Exception):
    """The stream ended before a record did."""


class ScanLimitError(Exception):
    """A size or depth limit of the scan was reached; the file is reported as an error."""


class Budget:
    """Counts decompressed or copied bytes across a whole scan and stops at ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0

    def take(self, n: int) -> None:
        self.used += n
        if self.used > self.max_bytes:
            raise ScanLimitError(
                f"more than {self.max_bytes} bytes would have to be read or decompressed; "
                "raise max_bytes (--max-bytes) to scan this file"
            )


class Reader:
    """Reads a binary stream forward, tracking the offset and skipping without copying.

    Skips use ``seek`` when the stream can seek (files, zip members stored without
    compression), so the time to skip tensor bytes does not depend on their size.
    """

    def __init__(self, f: IO[bytes], *, size: int | None = None) -> None:
        self._f: Any = f
        self.seekable = _seekable(f)
        self.pos = f.tell() if self.seekable else 0
        self.size = size

    def read(self, n: int) -> bytes:
        if n < 0:
            raise Truncated("negative length")
        if self.size is not None and self.pos + n > self.size:
            raise Truncated(f"record of {n} bytes at offset {self.pos} runs past the end")
        data = self._f.read(n)
        if len(data) != n:
            self.pos += len(data)
            raise Truncated(f"stream ended at offset {self.pos} inside a record of {n} bytes")
        self.pos += n
        return data

    def read_byte(self) -> int:
        data = self._f.read(1)
        if not data:
            raise Truncated(f"stream ended at offset {self.pos}")
        self.pos += 1
        return data[0]

    def at_eof(self) -> bool:
        if self.size is not None:
            return self.pos >= self.size
        data = self._f.read(1)
        if not data:
            return True
        if self.seekable:
            self._f.seek(-1, os.SEEK_CUR)
        else:
            self._pushback(data)
        return False

    def _pushback(self, data: bytes) -> None:
        rest = self._f
        self._f = _Chain(data, rest)

    def readline(self, limit: int) -> bytes:
        """A line without its ``\\n``; raises when there is no newline within ``limit``.

        At the end of the stream a last line without a newline is what the C unpickler makes
        of it: the rest of the stream less its last byte (it drops that byte as if it were the
        newline), so ``cos\\ngetcwdX`` at the very end still names ``os.getcwd``.
        """
        line = self._f.readline(limit + 1) if hasattr(self._f, "readline") else b""
        if not line.endswith(b"\n"):
            self.pos += len(line)
            if len(line) > limit:
                raise Truncated(f"line longer than {limit} bytes at offset {self.pos}")
            if len(line) < 2 or not self.at_eof():
                raise Truncated(f"stream ended at offset {self.pos} inside a text line")
            return line[:-1]
        self.pos += len(line)
        return line[:-1]

    def skip(self, n: int) -> None:
        if n < 0:
            raise Truncated("negative length")
        if self.size is not None and self.pos + n > self.size:
            raise Truncated(f"record of {n} bytes at offset {self.pos} runs past the end")
        if self.seekable:
            self._f.seek(n, os.SEEK_CUR)
            self.pos += n
            return
        left = n
        while left:
            got = self._f.read(min(left, _CHUNK))
            if not got:
                self.pos += n - left
                raise Truncated(f"stream ended at offset {self.pos} inside a record")
            left -= len(got)
        self.pos += n


class _Chain(io.RawIOBase):
    """A few pushed-back bytes followed by the rest of a stream."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if not self._head:
            return self._rest.read(n)
        if n < 0:
            out, self._head = self._head, b""
            return out + self._rest.read()
        out, self._head = self._head[:n], self._head[n:]
        if len(out) < n:
            out += self._rest.read(n - len(out))
        return out

    def readline(self, limit: int | None = -1) -> bytes:
        lim = -1 if limit is None else limit
        if self._head:
            idx = self._head.find(b"\n")
            if idx >= 0 and (lim < 0 or idx < lim):
                out, self._head = self._head[: idx + 1], self._head[idx + 1 :]
                return out
            out = self.read(len(self._head) if lim < 0 else min(lim, len(self._head)))
            more = self._rest.readline(-1 if lim < 0 else lim - len(out))
            return out + more
        return self._rest.readline(lim)


class Window(io.RawIOBase):
    """A read-only, seekable view of ``length`` bytes of ``f`` starting at ``start``."""

    def __init__(self, f: IO[bytes], start: int, length: int) -> None:
        self._f = f
        self._start = start
        self._length = length
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(b), self._length - self._pos)
        if n <= 0:
            return 0
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)


def _seekable(f: IO[bytes]) -> bool:
    try:
        return bool(f.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def stream_size(f: IO[bytes]) -> int | None:
    """The size of a seekable stream, or None."""
    if not _seekable(f):
        return None
    here = f.tell()
    end = f.seek(0, os.SEEK_END)
    f.seek(here)
    return end
