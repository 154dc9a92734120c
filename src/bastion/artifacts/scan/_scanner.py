"""Dispatch: identify each file by content and hand it to the right scanner, recursively."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

from bastion.artifacts.scan import _containers as containers
from bastion.artifacts.scan import _formats as formats
from bastion.artifacts.scan import _trees as trees
from bastion.artifacts.scan._pickle import scan_pickles
from bastion.artifacts.scan._stream import Budget, Reader, ScanLimitError, Truncated
from bastion.artifacts.scan._stream import stream_size as _size
from bastion.artifacts.scan._types import FileScan, Finding, ScanReport, Verdict, combine
from bastion.errors import ConfigurationError, InputError

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_DEPTH", "scan_path", "scan_paths", "scan_stream"]

log = logging.getLogger(__name__)

DEFAULT_MAX_DEPTH = 5
DEFAULT_MAX_BYTES = 1 << 30
_TEXT_LIMIT = 64 << 20
_STORAGE = re.compile(r"(?:.*/)?(?:data/\d+|\.data/.*|version|\.format_version|byteorder|"
                      r"\.storage_alignment)")
_PICKLE_NAMES = (".pkl", ".pickle")


@dataclass
class _Context:
    max_depth: int
    budget: Budget


def scan_path(
    path: str | os.PathLike[str],
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> FileScan:
    """Scan one file (or every file under a folder) without loading anything from it.

    ``max_depth`` bounds how deeply containers may nest; ``max_bytes`` bounds the bytes that
    may be decompressed or copied while scanning (stored tensor bytes are skipped, not read).
    A file that hits either limit is reported as ``error``, never as ``clean``.

    >>> import pickle, tempfile, os
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = os.path.join(d, "m.pkl")
    ...     with open(p, "wb") as f:
    ...         pickle.dump({"w": [1.0, 2.0]}, f)
    ...     scan_path(p).verdict.value
    'clean'
    """
    if max_depth < 0:
        raise ConfigurationError(f"max_depth must be >= 0, got {max_depth}")
    if max_bytes <= 0:
        raise ConfigurationError(f"max_bytes must be > 0, got {max_bytes}")
    p = Path(path)
    if not p.exists():
        raise InputError(f"no such file or folder: {p}; give the path of a model file")
    if p.is_dir():
        members = [scan_path(c, max_depth=max_depth, max_bytes=max_bytes)
                   for c in _files_under(p)]
        return combine(str(p), "directory", [], members=members,
                       skipped=all(m.verdict.value == "skipped" for m in members))
    if not p.is_file():
        return combine(str(p), "unknown", [], skipped=True)  # a device, socket or FIFO
    ctx = _Context(max_depth, Budget(max_bytes))
    try:
        with open(p, "rb") as f:
            return scan_stream(f, str(p), ctx, 0, (p.name,))
    except OSError as exc:
        return combine(str(p), "unknown", [], error=f"cannot read: {exc}")


def scan_paths(
    paths: Iterable[str | os.PathLike[str]],
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_bytes: int = DEFAULT_MAX_BYTES,
    strict: bool = False,
) -> ScanReport:
    """Scan files and folders (recursively); one :class:`FileScan` per file.

    ``strict`` makes a skipped file (one no loader would execute) fail the report's exit code.
    """
    files: list[FileScan] = []
    for path in paths:
        p = Path(path)
        if not p.exists():
            raise InputError(f"no such file or folder: {p}")
        targets: Sequence[Path] = _files_under(p) if p.is_dir() else [p]
        files.extend(scan_path(t, max_depth=max_depth, max_bytes=max_bytes) for t in targets)
    return ScanReport(tuple(files), strict=strict)


def _files_under(folder: Path) -> list[Path]:
    return sorted(q for q in folder.rglob("*") if q.is_file())


def scan_stream(
    f: IO[bytes], path: str, ctx: _Context, depth: int, names: tuple[str, ...] = (),
    *, torchscript: bool = False,
) -> FileScan:
    """Scan a seekable stream whose content decides its format."""
    if depth > ctx.max_depth:
        return combine(path, "unknown", [], error=(
            f"containers nest deeper than max_depth={ctx.max_depth}; raise --max-depth to scan"
        ))
    start = f.tell()
    head = f.read(formats.HEAD)
    f.seek(start)
    kinds = formats.readings(head)
    if any(n.lower().endswith(_PICKLE_NAMES) for n in names):
        kinds = [("pickle" if k == "pickle?" else k) for k in kinds] or ["pickle"]
    kinds += [k for k in _stream_readings(f, start) if k not in kinds]
    tree = trees.sniff_tree(head)
    if tree is not None:
        kinds.append(tree)
    if not kinds:
        kinds = ["unknown"]
    scans = []
    for kind in kinds:
        f.seek(start)
        scans.append(_scan_as(kind, f, path, ctx, depth, torchscript))
    return _polyglot(path, scans)


def _scan_as(fmt: str, f: IO[bytes], path: str, ctx: _Context, depth: int,
             torchscript: bool) -> FileScan:
    try:
        return _dispatch(fmt, f, path, ctx, depth, torchscript)
    except ScanLimitError as exc:
        return combine(path, fmt, [], error=str(exc))
    except (containers.ContainerError, Truncated, ValueError, SyntaxError, struct.error,
            zlib.error, EOFError, OSError, MemoryError, RecursionError) as exc:
        return combine(path, fmt, [], error=f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # a parser bug must fail closed, never crash or pass the file
        log.exception("unexpected error while scanning %s", path)
        return combine(path, fmt, [], error=f"scanner failure ({type(exc).__name__}: {exc})")


def _stream_readings(f: IO[bytes], start: int) -> list[str]:
    """Readings that the first bytes do not show: ``zipfile`` finds an archive by its end
    record (junk or another format may come first), ``tarfile`` by a valid first header."""
    out = []
    try:
        if start == 0 and zipfile.is_zipfile(f):
            out.append("zip")
        f.seek(start)
        if containers.is_tar(f):
            out.append("tar")
    finally:
        f.seek(start)
    return out


def _polyglot(path: str, scans: list[FileScan]) -> FileScan:
    """One result for a file read every way a loader would read it.

    Readings that find nothing a loader would run (``skipped``) drop out; when more than one
    remains the file is a polyglot and each reading is a member (``file!<as zip>``).
    """
    shown = [s for s in scans if s.verdict is not Verdict.SKIPPED]
    if not shown:
        return scans[0]
    if len(shown) == 1:
        return shown[0]
    members = [replace(s, path=f"{path}!<as {s.format}>") for s in shown]
    return combine(path, "+".join(s.format for s in shown), [], members=members)


def _dispatch(fmt: str, f: IO[bytes], path: str, ctx: _Context, depth: int,
              torchscript: bool) -> FileScan:
    if fmt in ("pickle", "pickle?"):
        return _scan_pickle(f, path, fmt, torchscript)
    if fmt == "zip":
        return _scan_zip(f, path, ctx, depth)
    if fmt == "tar":
        members = [
            scan_stream(s, f"{path}!{name}", ctx, depth + 1, (name,))
            for name, s, _ in containers.iter_tar(f, ctx.budget) if s is not None
        ]
        return combine(path, "tar", [], members=_shown(members))
    if fmt in ("gzip", "bz2", "xz", "lzma", "zlib"):
        inner = containers.decompress(f, fmt, ctx.budget)
        with inner:
            member = scan_stream(inner, f"{path}!<{fmt}>", ctx, depth + 1, ())
        return combine(path, fmt, [], members=[member], skipped=member.verdict.value == "skipped")
    if fmt in ("lz4", "joblib-zfile"):
        inner = containers.decompress(f, fmt, ctx.budget)
        with inner:
            member = scan_stream(inner, f"{path}!<{fmt}>", ctx, depth + 1, ())
        return combine(path, fmt, [], members=[member], skipped=member.verdict.value == "skipped")
    if fmt == "7z":
        members = [scan_stream(s, f"{path}!{name}", ctx, depth + 1, (name,))
                   for name, s in containers.iter_7z(f, ctx.budget)]
        return combine(path, "7z", [], members=_shown(members))
    if fmt == "numpy":
        _, has_object = formats.npy_header(f)
        if not has_object:
            return combine(path, "numpy", [])
        res = scan_pickles(Reader(f, size=_size(f)), legacy_torch=False)
        return combine(path, "numpy", res.findings, error=res.error)
    if fmt == "safetensors":
        size = _size(f)
        if size is None:
            return combine(path, fmt, [], error="safetensors needs a seekable stream")
        findings, error = formats.scan_safetensors(f, size - f.tell())
        return combine(path, "safetensors", findings, error=error)
    if fmt == "onnx":
        findings, error = formats.scan_onnx(_read_all(f, ctx))
        return combine(path, "onnx", findings, error=error)
    if fmt == "hdf5":
        kind, findings, error = formats.scan_hdf5(f)
        return combine(path, kind, findings, error=error)
    if fmt in trees.TREE_FORMATS:
        return combine(path, fmt, trees.scan_tree_model(fmt, _read_all(f, ctx)))
    return combine(path, "unknown", [], skipped=True)


def _scan_pickle(f: IO[bytes], path: str, fmt: str, torchscript: bool) -> FileScan:
    start = f.tell()
    res = scan_pickles(Reader(f, size=_size(f)), torchscript=torchscript)
    if fmt == "pickle?" and res.not_a_pickle:
        f.seek(start)
        if not _pickletools_disagrees(f):
            return combine(path, "unknown", [], skipped=True)
        return combine(path, "pickle", [], error=(
            f"{res.error}, but pickletools reads the stream as a complete pickle: the loaders "
            "may accept what the scanner could not read"
        ))
    kind = "pickle"
    findings = list(res.findings)
    if res.values and isinstance(res.values[0], int) and res.values[0] == 0x1950A86A20F9469CFC6C:
        kind = "pytorch-legacy"
    elif any(m.startswith("joblib") for m, _ in res.globals_seen):
        kind = "joblib"
    if res.joblib_arrays:
        # pickle.load and torch.load read the bytes joblib takes for an array as opcodes:
        # from the first such array on, what they would run is a reading of its own
        f.seek(start)
        plain = scan_pickles(Reader(f, size=_size(f)), torchscript=torchscript, joblib=False)
        first = min(res.joblib_arrays)
        seen = {(x.operator, x.module, x.name, x.position) for x in findings}
        findings += [x for x in plain.findings if x.position >= first
                     and (x.operator, x.module, x.name, x.position) not in seen]
    return combine(path, kind, findings, error=res.error)


_PICKLETOOLS_WINDOW = 16 << 20


def _pickletools_disagrees(f: IO[bytes]) -> bool:
    """Whether pickletools parses, as a whole pickle, a stream the simulator gave up on at
    once (a second parser as a check on the first: a disagreement is an error, not a skip).
    A walk still going at the end of the window counts as a disagreement too."""
    import pickletools

    window = io.BytesIO(f.read(_PICKLETOOLS_WINDOW + 1))
    try:
        for op, _, pos in pickletools.genops(window):
            if op.name == "STOP" or (pos or 0) >= _PICKLETOOLS_WINDOW:
                return True
    except Exception:  # pickletools raises ValueError and others on bytes it cannot parse
        return False
    return False


def _read_all(f: IO[bytes], ctx: _Context, limit: int | None = None) -> bytes:
    size = _size(f)
    if size is not None:
        ctx.budget.take(size - f.tell())
        if limit is not None and size - f.tell() > limit:
            raise ScanLimitError(f"{size} bytes is more than the {limit} the scanner reads here")
    return f.read()


def _shown(members: list[FileScan]) -> list[FileScan]:
    return [m for m in members if m.verdict.value != "skipped"]


def _zip_kind(names: set[str]) -> str:
    bases = {n.rsplit("/", 1)[-1] for n in names}
    if "data.pkl" in bases or "constants.pkl" in bases:
        if "constants.pkl" in bases or any("/code/" in n for n in names):
            return "torchscript"
        return "pytorch"
    if "config.json" in names:
        # keras.saving reads config.json alone; metadata.json and the weights are optional
        return "keras"
    if "schema.json" in names:
        return "skops"
    if names and all(n.endswith(".npy") or n.endswith("/") for n in names):
        return "npz"
    return "zip"


def _scan_zip(f: IO[bytes], path: str, ctx: _Context, depth: int) -> FileScan:
    entries = containers.list_zip(f)
    all_names = {n for e in entries for n in e.names}
    kind = _zip_kind(all_names)
    torch_like = kind in ("pytorch", "torchscript")
    findings: list[Finding] = []
    members: list[FileScan] = []
    for entry in entries:
        if all(n.endswith("/") for n in entry.names) and entry.size == entry.compressed_size == 0:
            continue  # a folder; one that holds data is read like any member (zipfile does)
        is_pickle_name = any(n.endswith(_PICKLE_NAMES) for n in entry.names)
        if torch_like and not is_pickle_name and all(_STORAGE.fullmatch(n) for n in entry.names):
            continue  # tensor storages and version files: never unpickled, never read
        label = entry.name if entry.name == entry.local_name else (
            f"{entry.name} (local header: {entry.local_name})")
        mpath = f"{path}!{label}"
        try:
            raw = containers.open_zip_entry(f, entry, ctx.budget)
        except (containers.ContainerError, ScanLimitError) as exc:
            members.append(combine(mpath, "unknown", [], error=str(exc)))
            continue
        with raw as stream:
            members.append(_scan_zip_member(stream, mpath, entry, kind, ctx, depth))
    return combine(path, kind, findings, members=_shown(members))


def _scan_zip_member(stream: IO[bytes], mpath: str, entry: containers.ZipEntry, kind: str,
                     ctx: _Context, depth: int) -> FileScan:
    base = entry.name.rsplit("/", 1)[-1]
    if kind == "torchscript" and "/code/" in f"/{entry.name}" and entry.name.endswith(".py"):
        text = _read_all(stream, ctx, _TEXT_LIMIT).decode("utf-8", "replace")
        return combine(mpath, "torchscript-code", formats.scan_torchscript_code(text, entry.name))
    if kind == "keras" and entry.name == "config.json":
        return _keras_config(stream, mpath, ctx, depth)
    if kind == "skops" and entry.name == "schema.json":
        return _json_member(stream, mpath, ctx, "skops-schema", formats.scan_skops_schema)
    if kind in ("pytorch", "torchscript") and base in ("data.pkl", "constants.pkl"):
        return _scan_pickle(stream, mpath, "pickle", kind == "torchscript")
    return scan_stream(stream, mpath, ctx, depth + 1, entry.names,
                       torchscript=kind == "torchscript")


def _keras_config(stream: IO[bytes], mpath: str, ctx: _Context, depth: int) -> FileScan:
    """Layers and custom objects of a Keras config, and the files it embeds (a
    ``TorchModuleWrapper`` holds a whole ``torch.save`` archive), each scanned as a file."""
    try:
        doc = json.loads(_read_all(stream, ctx, _TEXT_LIMIT).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return combine(mpath, "keras-config", [], error=f"not valid JSON: {exc}")
    members = [scan_stream(io.BytesIO(blob), f"{mpath}!{where}", ctx, depth + 1, ())
               for where, blob in formats.keras_embedded(doc)]
    return combine(mpath, "keras-config", formats.scan_keras_config(doc, "config.json"),
                   members=_shown(members))


def _json_member(stream: IO[bytes], mpath: str, ctx: _Context, fmt: str,
                 judge: object) -> FileScan:
    try:
        doc = json.loads(_read_all(stream, ctx, _TEXT_LIMIT).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return combine(mpath, fmt, [], error=f"not valid JSON: {exc}")
    return combine(mpath, fmt, judge(doc))  # type: ignore[operator]
