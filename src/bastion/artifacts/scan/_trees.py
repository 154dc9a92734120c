"""Tree-ensemble model formats: detection, a safe parser, and structure validation.

Three native formats hold only data (no code), so the risk is not code on load but a crafted
structure that the library's C++ trusts: a child index out of range, a cycle, a split on a
feature past the input width, a NaN threshold. bastion parses each format itself (pure
Python, bounded) and validates the structure (:func:`bastion.models.trees.validate_tree`)
before any library or any ``predict`` sees it:

- ``xgboost-json``: XGBoost's JSON model document (``save_model("m.json")``).
- ``xgboost-ubj``: the same document in Universal Binary JSON (``save_model("m.ubj")``),
  decoded by :func:`decode_ubjson`.
- ``lightgbm-text``: LightGBM's text model (``booster.save_model("m.txt")``).

:func:`scan_tree_model` turns a refusal into a scanner :class:`Finding`; the model loader
(:func:`bastion.models.loading.load_model`) uses :func:`parse_tree_model`.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from bastion.artifacts.scan._types import Finding, Severity
from bastion.errors import ModelLoadError

__all__ = ["TREE_FORMATS", "decode_ubjson", "parse_tree_model", "scan_tree_model", "sniff_tree"]

TREE_FORMATS = ("xgboost-json", "xgboost-ubj", "lightgbm-text")
_UBJ_MAX_DEPTH = 64
_INT_TYPES = {b"i": ">b", b"U": ">B", b"I": ">h", b"l": ">i", b"L": ">q"}
_FLOAT_TYPES = {b"d": ">f", b"D": ">d"}


def sniff_tree(head: bytes) -> str | None:
    """The tree format of a file from its first bytes, or ``None``.

    >>> sniff_tree(b'{"learner":{"attributes":{}')
    'xgboost-json'
    >>> sniff_tree(b"tree\\nversion=v4\\nnum_class=1")
    'lightgbm-text'
    >>> sniff_tree(b"{}") is None
    True
    """
    if head.startswith(b"tree\nversion=") or head.startswith(b"tree\r\nversion="):
        return "lightgbm-text"
    if head[:1] == b"{" and head[1:2] in _INT_TYPES and b"learner" in head[:32]:
        return "xgboost-ubj"
    stripped = head.lstrip()
    if stripped[:1] == b"{" and b'"learner"' in stripped[:64]:
        return "xgboost-json"
    return None


class _UBJReader:
    """A bounded decoder of XGBoost's UBJSON subset (objects, arrays, typed arrays, scalars)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ModelLoadError(
                f"UBJSON: a value at byte {self.pos} runs past the end of the file; "
                "the file is truncated or crafted"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def _marker(self) -> bytes:
        return self._take(1)

    def _int(self, marker: bytes) -> int:
        fmt = _INT_TYPES.get(marker)
        if fmt is None:
            raise ModelLoadError(f"UBJSON: expected an integer type at byte {self.pos}")
        return int(struct.unpack(fmt, self._take(struct.calcsize(fmt)))[0])

    def _count(self) -> int:
        n = self._int(self._marker())
        if n < 0 or n > len(self.data) - self.pos:
            raise ModelLoadError(f"UBJSON: a count of {n} at byte {self.pos} exceeds the file")
        return n

    def _string(self) -> str:
        n = self._count()
        try:
            return self._take(n).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelLoadError(f"UBJSON: a string at byte {self.pos} is not UTF-8") from exc

    def value(self, marker: bytes, depth: int) -> Any:
        if depth > _UBJ_MAX_DEPTH:
            raise ModelLoadError("UBJSON: containers nest too deeply")
        if marker in _INT_TYPES:
            return self._int(marker)
        if marker in _FLOAT_TYPES:
            fmt = _FLOAT_TYPES[marker]
            return float(struct.unpack(fmt, self._take(struct.calcsize(fmt)))[0])
        if marker == b"S":
            return self._string()
        if marker in (b"T", b"F"):
            return marker == b"T"
        if marker == b"Z":
            return None
        if marker == b"[":
            return self._array(depth)
        if marker == b"{":
            return self._object(depth)
        raise ModelLoadError(f"UBJSON: unknown type marker {marker!r} at byte {self.pos - 1}")

    def _header(self) -> tuple[bytes | None, int | None]:
        typ: bytes | None = None
        if self.data[self.pos : self.pos + 1] == b"$":
            self.pos += 1
            typ = self._marker()
        if self.data[self.pos : self.pos + 1] == b"#":
            self.pos += 1
            return typ, self._count()
        if typ is not None:
            raise ModelLoadError("UBJSON: a typed container without a count")
        return None, None

    def _array(self, depth: int) -> list[Any]:
        typ, count = self._header()
        if count is not None:
            if typ in _INT_TYPES or typ in _FLOAT_TYPES:
                fmt = (_INT_TYPES.get(typ) or _FLOAT_TYPES[typ])[1]
                size = struct.calcsize(fmt)
                raw = self._take(size * count)
                return list(struct.unpack(f">{count}{fmt}", raw))
            return [self.value(typ or self._marker(), depth + 1) for _ in range(count)]
        out: list[Any] = []
        while True:
            m = self._marker()
            if m == b"]":
                return out
            out.append(self.value(m, depth + 1))

    def _object(self, depth: int) -> dict[str, Any]:
        typ, count = self._header()
        out: dict[str, Any] = {}
        if count is not None:
            for _ in range(count):
                key = self._string()
                out[key] = self.value(typ or self._marker(), depth + 1)
            return out
        while True:
            if self.data[self.pos : self.pos + 1] == b"}":
                self.pos += 1
                return out
            key = self._string()
            out[key] = self.value(self._marker(), depth + 1)


def decode_ubjson(data: bytes) -> Any:
    """Decode a UBJSON document (the subset XGBoost writes), bounded by the input's size.

    >>> decode_ubjson(b"{L\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x01a[$d#i\\x01?\\x80\\x00\\x00}")
    {'a': [1.0]}
    """
    reader = _UBJReader(data)
    value = reader.value(reader._marker(), 0)
    if reader.pos != len(data):
        raise ModelLoadError(f"UBJSON: {len(data) - reader.pos} trailing bytes after the document")
    return value


def parse_tree_model(fmt: str, data: bytes) -> Any:
    """Parse and validate a tree model file's bytes into a :class:`TreeEnsemble`.

    Raises :class:`~bastion.errors.ModelLoadError` naming the problem (malformed document,
    unsupported feature, or a structure that fails validation).
    """
    from bastion.models.trees import from_lightgbm_text, from_xgboost_json

    if fmt == "lightgbm-text":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelLoadError("LightGBM text model is not UTF-8") from exc
        return from_lightgbm_text(text)
    if fmt == "xgboost-json":
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ModelLoadError(f"XGBoost JSON model is not valid JSON ({exc})") from exc
        return from_xgboost_json(doc)
    if fmt == "xgboost-ubj":
        return from_xgboost_json(decode_ubjson(data))
    raise ModelLoadError(f"{fmt!r} is not a tree model format; expected one of {TREE_FORMATS}")


def scan_tree_model(fmt: str, data: bytes) -> list[Finding]:
    """Findings for a tree model file: none when it parses and validates, else one (high)."""
    try:
        parse_tree_model(fmt, data)
    except ModelLoadError as exc:
        return [Finding("tree-structure", fmt, "", 0, Severity.HIGH, str(exc))]
    return []
