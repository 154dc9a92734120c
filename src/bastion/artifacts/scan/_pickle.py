"""A static simulator of the pickle machine.

It walks the opcodes of a pickle stream itself (it never calls ``pickle`` or ``pickletools``),
keeps the stack, the mark stack and the memo the way the unpickler would, and so resolves every
global the stream would import, whichever way its name is spelled: ``GLOBAL`` and ``INST``
text operands, ``STACK_GLOBAL`` operands that are literals, memo references or protocol-0
``STRING``s, and the names ``fix_imports`` maps for protocols 0-2. Each global is judged
against the allowlist; calls (``REDUCE``, ``OBJ``, ``INST``, ``NEWOBJ``, ``NEWOBJ_EX``) of
anything that is not an imported global, ``BUILD`` on module-level objects or with dunder
state, extension codes and unresolvable names are findings too. Bytes handed to a nested
loader (``pickle.loads``...) are scanned as pickles of their own, and joblib arrays that
follow their ``NumpyArrayWrapper`` are skipped by their declared size (object arrays are
scanned as the nested pickles they are).

A parse error stops the walk but keeps every finding made before it, so a payload placed
before a corrupt tail is still reported.
"""

from __future__ import annotations

import _compat_pickle
import io
import math
import struct
from dataclasses import dataclass, field
from typing import Any

from bastion.artifacts.scan._allowlist import NESTED_LOADERS, grade, lookup
from bastion.artifacts.scan._opcodes import DISPATCH
from bastion.artifacts.scan._stream import Reader, ScanLimitError, Truncated
from bastion.artifacts.scan._types import Finding, Severity
from bastion.artifacts.scan._values import (
    KEEP_BYTES,
    MAX_LINE,
    BigBytes,
    Global,
    Obj,
    ParseError,
    PDict,
    Stop,
    short,
)

__all__ = ["PickleScan", "scan_pickles"]

MAX_NESTING = 8
_LATIN1 = {"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "l1"}


@dataclass
class PickleScan:
    """What one walk over a stream of one or more pickles found."""

    findings: list[Finding] = field(default_factory=list)
    error: str | None = None
    pickles: int = 0
    values: list[Any] = field(default_factory=list)
    globals_seen: list[tuple[str, str]] = field(default_factory=list)
    not_a_pickle: bool = False
    #: offsets where joblib's reading skips the bytes of an array (read as data, not opcodes)
    joblib_arrays: list[int] = field(default_factory=list)


def scan_pickles(
    reader: Reader,
    *,
    torchscript: bool = False,
    max_pickles: int | None = None,
    depth: int = 0,
    legacy_torch: bool = True,
    joblib: bool = True,
) -> PickleScan:
    """Walk every pickle in ``reader`` until the end of the stream (or ``max_pickles``).

    A stream that starts with the legacy torch magic number is read as torch's five pickles
    and the storage bytes after them are not parsed. ``joblib`` reads the array bytes after a
    ``NumpyArrayWrapper`` the way ``joblib.load`` does (skipped); without it they are read as
    opcodes, the way ``pickle.load`` and ``torch.load`` read the same file.
    """
    result = PickleScan()
    limit = max_pickles
    while limit is None or result.pickles < limit:
        if result.pickles and reader.at_eof():
            break
        start = reader.pos
        machine = _Machine(reader, result, torchscript=torchscript, depth=depth, joblib=joblib)
        try:
            value = machine.run()
        except ParseError as exc:
            result.error = f"not a valid pickle at offset {exc.args[1]}: {exc.args[0]}"
            result.not_a_pickle = (
                result.pickles == 0 and not result.globals_seen and not result.findings
            )
            if result.pickles and machine.ops == 0:
                result.error = (
                    f"bytes at offset {start} after pickle {result.pickles} are not a pickle "
                    "(trailing data the scanner cannot account for)"
                )
            break
        result.pickles += 1
        result.values.append(value)
        if result.pickles == 1 and legacy_torch and limit is None and _is_legacy_magic(value):
            limit = 5
    return result


def _is_legacy_magic(value: Any) -> bool:
    return isinstance(value, int) and value == 0x1950A86A20F9469CFC6C


class _Machine:
    def __init__(self, reader: Reader, result: PickleScan, *, torchscript: bool, depth: int,
                 joblib: bool = True):
        self.r = reader
        self.joblib = joblib
        self.result = result
        self.torchscript = torchscript
        self.depth = depth
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.proto = 0
        self.ops = 0
        self.value: Any = None

    # -- driver -------------------------------------------------------------------------
    def run(self) -> Any:
        while True:
            pos = self.r.pos
            try:
                code = self.r.read_byte()
            except Truncated as exc:
                raise ParseError("the stream ended before STOP", pos) from exc
            handler = DISPATCH.get(code)
            if handler is None:
                raise ParseError(f"unknown opcode {code:#04x}", pos)
            try:
                handler(self, pos)
            except Stop:
                return self.value
            except ParseError:
                raise
            except ScanLimitError:
                raise
            except Truncated as exc:
                raise ParseError(str(exc), pos) from exc
            except (IndexError, KeyError, ValueError, TypeError, struct.error,
                    UnicodeDecodeError, OverflowError) as exc:
                raise ParseError(f"{type(exc).__name__}: {exc}", pos) from exc
            self.ops += 1

    # -- helpers ------------------------------------------------------------------------
    def finding(self, op: str, module: str, name: str, pos: int, sev: Severity, why: str) -> None:
        self.result.findings.append(Finding(op, module, name, pos, sev, why))

    def push(self, v: Any) -> None:
        self.stack.append(v)

    def pop(self) -> Any:
        if not self.stack:
            raise IndexError("unpickling stack underflow")
        return self.stack.pop()

    def top(self) -> Any:
        if not self.stack:
            raise IndexError("unpickling stack underflow")
        return self.stack[-1]

    def pop_mark(self) -> list[Any]:
        items = self.stack
        if not self.metastack:
            raise IndexError("no MARK on the stack")
        self.stack = self.metastack.pop()
        return items

    def u(self, fmt: str, n: int) -> int:
        return int(struct.unpack(fmt, self.r.read(n))[0])

    def data(self, n: int) -> bytes | BigBytes:
        if n > KEEP_BYTES:
            self.r.skip(n)
            return BigBytes(n)
        return self.r.read(n)

    def text(self, n: int) -> str:
        if n > KEEP_BYTES:
            self.r.skip(n)
            return ""
        return self.r.read(n).decode("utf-8", "surrogatepass")

    def line(self) -> bytes:
        return self.r.readline(MAX_LINE)

    def resolve(self, op: str, module: str, name: str, pos: int) -> Global:
        if not _importable(module) or not _importable(name):
            # the unpickler's import or attribute lookup fails on such a name: nothing runs
            raise ParseError(f"{module!r}.{name!r} is not an importable name", pos)
        if self.proto < 3:
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        self.result.globals_seen.append((module, name))
        allowed = lookup(module, name, torchscript=self.torchscript) is not None
        if not allowed:
            self.finding(
                op, module, name, pos, grade(module, name),
                f"imports {module}.{name}, which is not on the allowlist of safe globals",
            )
        return Global(module, name, allowed)

    def call(self, op: str, func: Any, args: Any, pos: int) -> Obj:
        if isinstance(func, Global):
            key = (func.module, func.name)
            if key in NESTED_LOADERS:
                self.nested(op, func, args, pos)
            elif key == ("_codecs", "encode"):
                return self.codecs_encode(func, args, pos)
        else:
            self.finding(
                op, "", short(func), pos, Severity.HIGH,
                "calls an object that is not an imported global (a computed callable such as "
                "the result of another call); the scanner cannot tell what it runs",
            )
        return Obj(func, args)

    def codecs_encode(self, func: Global, args: Any, pos: int) -> Any:
        if isinstance(args, tuple) and len(args) >= 1 and isinstance(args[0], str):
            encoding = args[1] if len(args) > 1 else "utf-8"
            if not isinstance(encoding, str) or encoding.lower() not in _LATIN1:
                self.finding(
                    "REDUCE", "_codecs", "encode", pos, Severity.MEDIUM,
                    f"_codecs.encode with codec {encoding!r}; pickles only use latin-1 here",
                )
                return Obj(func, args)
            return args[0].encode("latin-1", "replace")
        return Obj(func, args)

    def nested(self, op: str, func: Global, args: Any, pos: int) -> None:
        payload = args[0] if isinstance(args, tuple) and args else None
        if not isinstance(payload, bytes):
            return
        if self.depth >= MAX_NESTING:
            self.finding(op, func.module, func.name, pos, Severity.HIGH,
                         "nested payloads go deeper than the scanner follows")
            return
        inner = scan_pickles(Reader(io.BytesIO(payload)), depth=self.depth + 1,
                             legacy_torch=False)
        for f in inner.findings:
            self.finding(
                f.operator, f.module, f.name, pos, f.severity,
                f"inside bytes passed to {func.module}.{func.name} (offset {f.position}): "
                f"{f.why}",
            )

    def build(self, pos: int) -> None:
        state = self.pop()
        inst = self.top()
        if isinstance(inst, Global):
            self.finding(
                "BUILD", inst.module, inst.name, pos, Severity.HIGH,
                "BUILD sets attributes on a module-level object (a class or function), "
                "changing it for everything that uses it",
            )
        for key in _state_keys(state):
            if key.startswith("__") and key.endswith("__"):
                self.finding(
                    "BUILD", _cls_module(inst), key, pos, Severity.HIGH,
                    f"BUILD state sets the special attribute {key}, which redirects what a "
                    "later BUILD or call runs",
                )
        if isinstance(inst, Obj):
            inst.state = state
            cls = _constructed_class(inst)
            if self.joblib and isinstance(cls, Global) and (cls.module, cls.name) == (
                "joblib.numpy_pickle", "NumpyArrayWrapper",
            ):
                self.joblib_array(state, pos)

    def joblib_array(self, state: Any, pos: int) -> None:
        if not isinstance(state, PDict):
            raise ParseError("NumpyArrayWrapper state is not a dict", pos)
        shape = state.get("shape")
        dtype = state.get("dtype")
        if not isinstance(shape, tuple) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise ParseError("NumpyArrayWrapper shape is not a tuple of sizes", pos)
        try:
            dt = _numpy_dtype(dtype)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise ParseError(f"cannot rebuild a joblib array's dtype as numpy would: {exc}",
                             pos) from exc
        if dt.hasobject:
            # object array: joblib wrote it with pickle.dump right here
            inner = scan_pickles(self.r, max_pickles=1, depth=self.depth + 1,
                                 legacy_torch=False, torchscript=self.torchscript)
            self.result.findings.extend(inner.findings)
            self.result.globals_seen.extend(inner.globals_seen)
            if inner.error:
                raise ParseError(f"joblib object array: {inner.error}", pos)
            return
        if dt.itemsize == 0:
            raise ParseError("a joblib array of a zero-size dtype (joblib cannot read it)", pos)
        self.result.joblib_arrays.append(self.r.pos)
        if state.get("numpy_array_alignment_bytes") is not None:
            self.r.skip(self.r.read_byte())
        # joblib reads count * dtype.itemsize bytes (numpy.multiply.reduce(shape) items)
        self.r.skip(math.prod(shape) * dt.itemsize)


def _constructed_class(inst: Obj) -> Any:
    """The class an object was made from: the callable itself, or the class handed to
    ``copyreg._reconstructor`` / ``copyreg.__newobj__`` (protocols 0 and 1, ``NEWOBJ`` via
    copyreg)."""
    func = inst.func
    if (isinstance(func, Global) and func.module == "copyreg"
            and func.name in ("_reconstructor", "__newobj__", "__newobj_ex__")
            and isinstance(inst.args, tuple) and inst.args):
        return inst.args[0]
    return func


_DTYPE_CLASSES = {("numpy", "dtype"), ("numpy.core.multiarray", "dtype"),
                  ("numpy._core.multiarray", "dtype")}


def _numpy_dtype(value: Any) -> Any:
    """The numpy dtype the unpickler would build from ``value`` (``numpy.dtype(*args)`` and
    then ``__setstate__``), built by numpy itself so sizes match joblib's exactly. Only plain
    values go in: anything else is refused."""
    import numpy as np

    if not (isinstance(value, Obj) and isinstance(value.func, Global)
            and (value.func.module, value.func.name) in _DTYPE_CLASSES):
        raise ValueError("the dtype is not a numpy.dtype(...) call")
    args = _plain(value.args)
    if not isinstance(args, tuple) or not args or not isinstance(args[0], str):
        raise ValueError("numpy.dtype arguments are not (str, ...)")
    dt = np.dtype(args[0], *[bool(a) for a in args[1:3]])
    if value.state is not None:
        dt.__setstate__(_plain(value.state))  # type: ignore[attr-defined]
    return dt


def _plain(v: Any) -> Any:
    if v is None or isinstance(v, bool | int | float | str | bytes):
        return v
    if isinstance(v, tuple):
        return tuple(_plain(x) for x in v)
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, PDict):
        return {_plain(k): _plain(x) for k, x in v.pairs}
    if isinstance(v, Obj):
        return _numpy_dtype(v)
    raise TypeError(f"{short(v)} in a dtype")


def _importable(text: str) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def _cls_module(inst: Any) -> str:
    if isinstance(inst, Obj) and isinstance(inst.func, Global):
        return f"{inst.func.module}.{inst.func.name}"
    return ""


def _state_keys(state: Any) -> list[str]:
    out: list[str] = []
    parts = [state]
    if isinstance(state, tuple) and len(state) == 2:
        parts = list(state)
    for part in parts:
        if isinstance(part, PDict):
            out.extend(k for k, _ in part.pairs if isinstance(k, str))
    return out
