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
import codecs
import io
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bastion.artifacts.scan._allowlist import NESTED_LOADERS, grade, lookup
from bastion.artifacts.scan._stream import Reader, ScanLimitError, Truncated
from bastion.artifacts.scan._types import Finding, Severity

__all__ = ["PickleScan", "scan_pickles"]

MAX_LINE = 1 << 20
KEEP_BYTES = 1 << 20
MAX_NESTING = 8
_LATIN1 = {"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "l1"}


class _Mark:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MARK"


MARK = _Mark()


@dataclass(eq=False)
class Global:
    module: str
    name: str
    allowed: bool


@dataclass(eq=False)
class Obj:
    """The result of a call (or of instantiating a class)."""

    func: Any
    args: Any
    state: Any = None


@dataclass(eq=False)
class Opaque:
    """A value the scanner does not model (a persistent id, an out-of-band buffer...)."""

    what: str


@dataclass(eq=False)
class BigBytes:
    length: int


@dataclass(eq=False)
class PDict:
    pairs: list[tuple[Any, Any]] = field(default_factory=list)

    def get(self, key: str) -> Any:
        for k, v in self.pairs:
            if k == key and isinstance(k, str):
                return v
        return None


@dataclass(eq=False)
class PSet:
    items: list[Any] = field(default_factory=list)


class ParseError(Exception):
    """The stream is not a valid pickle at this point."""


@dataclass
class PickleScan:
    """What one walk over a stream of one or more pickles found."""

    findings: list[Finding] = field(default_factory=list)
    error: str | None = None
    pickles: int = 0
    values: list[Any] = field(default_factory=list)
    globals_seen: list[tuple[str, str]] = field(default_factory=list)
    first_op_failed: bool = False


def scan_pickles(
    reader: Reader,
    *,
    torchscript: bool = False,
    max_pickles: int | None = None,
    depth: int = 0,
    legacy_torch: bool = True,
) -> PickleScan:
    """Walk every pickle in ``reader`` until the end of the stream (or ``max_pickles``).

    A stream that starts with the legacy torch magic number is read as torch's five pickles
    and the storage bytes after them are not parsed.
    """
    result = PickleScan()
    limit = max_pickles
    while limit is None or result.pickles < limit:
        if result.pickles and reader.at_eof():
            break
        start = reader.pos
        machine = _Machine(reader, result, torchscript=torchscript, depth=depth)
        try:
            value = machine.run()
        except ParseError as exc:
            result.error = f"not a valid pickle at offset {exc.args[1]}: {exc.args[0]}"
            result.first_op_failed = (
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


_Handler = Callable[["_Machine", int], None]
_DISPATCH: dict[int, _Handler] = {}


def _op(code: bytes) -> Callable[[_Handler], _Handler]:
    def register(fn: _Handler) -> _Handler:
        _DISPATCH[code[0]] = fn
        return fn

    return register


class _Stop(Exception):
    pass


class _Machine:
    def __init__(self, reader: Reader, result: PickleScan, *, torchscript: bool, depth: int):
        self.r = reader
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
            handler = _DISPATCH.get(code)
            if handler is None:
                raise ParseError(f"unknown opcode {code:#04x}", pos)
            try:
                handler(self, pos)
            except _Stop:
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
                op, "", _short(func), pos, Severity.HIGH,
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
            func = inst.func
            if isinstance(func, Global) and (func.module, func.name) == (
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
        itemsize = _dtype_itemsize(dtype)
        if itemsize is None:
            raise ParseError("cannot tell the item size of a joblib array's dtype", pos)
        if itemsize == 0:
            # object array: joblib wrote it with pickle.dump right here
            inner = scan_pickles(self.r, max_pickles=1, depth=self.depth + 1,
                                 legacy_torch=False, torchscript=self.torchscript)
            self.result.findings.extend(inner.findings)
            self.result.globals_seen.extend(inner.globals_seen)
            if inner.error:
                raise ParseError(f"joblib object array: {inner.error}", pos)
            return
        if state.get("numpy_array_alignment_bytes") is not None:
            self.r.skip(self.r.read_byte())
        self.r.skip(math.prod(shape) * itemsize)


def _importable(text: str) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def _short(v: Any) -> str:
    if isinstance(v, Global):
        return f"{v.module}.{v.name}"
    if isinstance(v, Obj):
        return f"result of calling {_short(v.func)}"
    return type(v).__name__


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


_DESCR = re.compile(r"[<>|=]?([a-zA-Z?])(\d*)")
_CHAR_SIZES = {"?": 1, "b": 1, "B": 1, "h": 2, "H": 2, "i": 4, "I": 4, "l": 8, "L": 8, "q": 8,
               "Q": 8, "e": 2, "f": 4, "d": 8, "g": 16, "F": 8, "D": 16, "G": 32}


def _dtype_itemsize(dtype: Any) -> int | None:
    """Item size of a pickled numpy dtype (0 for object dtypes), or None when unknown."""
    if not isinstance(dtype, Obj) or not isinstance(dtype.args, tuple) or not dtype.args:
        return None
    descr = dtype.args[0]
    if not isinstance(descr, str):
        return None
    m = _DESCR.fullmatch(descr)
    if m is None:
        return None
    kind, digits = m.group(1), m.group(2)
    if kind == "O":
        return 0
    state = dtype.state
    if isinstance(state, tuple) and len(state) >= 6 and isinstance(state[5], int) and state[5] > 0:
        return state[5]
    if digits:
        return int(digits)
    return _CHAR_SIZES.get(kind)


# ---- opcodes -----------------------------------------------------------------------------


@_op(b"\x80")
def _proto(m: _Machine, pos: int) -> None:
    proto = m.r.read_byte()
    if proto > 5:
        raise ParseError(f"unsupported pickle protocol {proto}", pos)
    m.proto = proto


@_op(b"\x95")
def _frame(m: _Machine, pos: int) -> None:
    m.r.read(8)


@_op(b".")
def _stop(m: _Machine, pos: int) -> None:
    m.value = m.pop()
    raise _Stop


@_op(b"(")
def _mark(m: _Machine, pos: int) -> None:
    m.metastack.append(m.stack)
    m.stack = []


@_op(b"0")
def _pop(m: _Machine, pos: int) -> None:
    if m.stack:
        m.stack.pop()
    else:
        m.pop_mark()


@_op(b"1")
def _pop_mark(m: _Machine, pos: int) -> None:
    m.pop_mark()


@_op(b"2")
def _dup(m: _Machine, pos: int) -> None:
    m.push(m.top())


# literals
@_op(b"N")
def _none(m: _Machine, pos: int) -> None:
    m.push(None)


@_op(b"\x88")
def _true(m: _Machine, pos: int) -> None:
    m.push(True)


@_op(b"\x89")
def _false(m: _Machine, pos: int) -> None:
    m.push(False)


@_op(b"I")
def _int(m: _Machine, pos: int) -> None:
    data = m.line()
    if data == b"00":
        m.push(False)
    elif data == b"01":
        m.push(True)
    else:
        m.push(int(data, 0))


@_op(b"J")
def _binint(m: _Machine, pos: int) -> None:
    m.push(m.u("<i", 4))


@_op(b"K")
def _binint1(m: _Machine, pos: int) -> None:
    m.push(m.r.read_byte())


@_op(b"M")
def _binint2(m: _Machine, pos: int) -> None:
    m.push(m.u("<H", 2))


@_op(b"L")
def _long(m: _Machine, pos: int) -> None:
    data = m.line()
    if data.endswith(b"L"):
        data = data[:-1]
    m.push(int(data, 0))


def _decode_long(data: bytes) -> int:
    return int.from_bytes(data, "little", signed=True)


@_op(b"\x8a")
def _long1(m: _Machine, pos: int) -> None:
    m.push(_decode_long(m.r.read(m.r.read_byte())))


@_op(b"\x8b")
def _long4(m: _Machine, pos: int) -> None:
    n = m.u("<i", 4)
    if n < 0:
        raise ParseError("LONG4 with a negative byte count", pos)
    m.push(_decode_long(m.r.read(n)) if n <= KEEP_BYTES else m.data(n))


@_op(b"F")
def _float(m: _Machine, pos: int) -> None:
    m.push(float(m.line()))


@_op(b"G")
def _binfloat(m: _Machine, pos: int) -> None:
    m.push(struct.unpack(">d", m.r.read(8))[0])


@_op(b"S")
def _string(m: _Machine, pos: int) -> None:
    data = m.line().rstrip()
    if len(data) >= 2 and data[0] == data[-1] and data[:1] in (b'"', b"'"):
        data = data[1:-1]
    else:
        raise ParseError("the STRING opcode argument must be quoted", pos)
    m.push(codecs.escape_decode(data)[0].decode("latin-1"))


@_op(b"T")
def _binstring(m: _Machine, pos: int) -> None:
    n = m.u("<i", 4)
    if n < 0:
        raise ParseError("BINSTRING pickle has negative byte count", pos)
    v = m.data(n)
    m.push(v.decode("latin-1") if isinstance(v, bytes) else v)


@_op(b"U")
def _short_binstring(m: _Machine, pos: int) -> None:
    m.push(m.r.read(m.r.read_byte()).decode("latin-1"))


@_op(b"V")
def _unicode(m: _Machine, pos: int) -> None:
    m.push(m.line().decode("raw-unicode-escape"))


@_op(b"X")
def _binunicode(m: _Machine, pos: int) -> None:
    m.push(m.text(m.u("<I", 4)))


@_op(b"\x8c")
def _short_binunicode(m: _Machine, pos: int) -> None:
    m.push(m.text(m.r.read_byte()))


@_op(b"\x8d")
def _binunicode8(m: _Machine, pos: int) -> None:
    m.push(m.text(m.u("<Q", 8)))


@_op(b"B")
def _binbytes(m: _Machine, pos: int) -> None:
    m.push(m.data(m.u("<I", 4)))


@_op(b"C")
def _short_binbytes(m: _Machine, pos: int) -> None:
    m.push(m.r.read(m.r.read_byte()))


@_op(b"\x8e")
def _binbytes8(m: _Machine, pos: int) -> None:
    m.push(m.data(m.u("<Q", 8)))


@_op(b"\x96")
def _bytearray8(m: _Machine, pos: int) -> None:
    m.push(m.data(m.u("<Q", 8)))


@_op(b"\x97")
def _next_buffer(m: _Machine, pos: int) -> None:
    m.push(Opaque("out-of-band buffer"))


@_op(b"\x98")
def _readonly_buffer(m: _Machine, pos: int) -> None:
    m.top()


# containers
@_op(b")")
def _empty_tuple(m: _Machine, pos: int) -> None:
    m.push(())


@_op(b"t")
def _tuple(m: _Machine, pos: int) -> None:
    m.push(tuple(m.pop_mark()))


@_op(b"\x85")
def _tuple1(m: _Machine, pos: int) -> None:
    m.push((m.pop(),))


@_op(b"\x86")
def _tuple2(m: _Machine, pos: int) -> None:
    b = m.pop()
    a = m.pop()
    m.push((a, b))


@_op(b"\x87")
def _tuple3(m: _Machine, pos: int) -> None:
    c = m.pop()
    b = m.pop()
    a = m.pop()
    m.push((a, b, c))


@_op(b"]")
def _empty_list(m: _Machine, pos: int) -> None:
    m.push([])


@_op(b"l")
def _list(m: _Machine, pos: int) -> None:
    m.push(list(m.pop_mark()))


@_op(b"}")
def _empty_dict(m: _Machine, pos: int) -> None:
    m.push(PDict())


@_op(b"d")
def _dict(m: _Machine, pos: int) -> None:
    items = m.pop_mark()
    if len(items) % 2:
        raise ParseError("odd number of items for DICT", pos)
    m.push(PDict([(items[i], items[i + 1]) for i in range(0, len(items), 2)]))


@_op(b"\x8f")
def _empty_set(m: _Machine, pos: int) -> None:
    m.push(PSet())


@_op(b"\x91")
def _frozenset(m: _Machine, pos: int) -> None:
    m.push(PSet(m.pop_mark()))


def _mutated(m: _Machine, target: Any, op: str, pos: int) -> None:
    if isinstance(target, Global):
        m.finding(op, target.module, target.name, pos, Severity.HIGH,
                  f"{op} changes a module-level object in place")


@_op(b"a")
def _append(m: _Machine, pos: int) -> None:
    v = m.pop()
    target = m.top()
    _mutated(m, target, "APPEND", pos)
    if isinstance(target, list):
        target.append(v)


@_op(b"e")
def _appends(m: _Machine, pos: int) -> None:
    items = m.pop_mark()
    target = m.top()
    _mutated(m, target, "APPENDS", pos)
    if isinstance(target, list):
        target.extend(items)


@_op(b"s")
def _setitem(m: _Machine, pos: int) -> None:
    v = m.pop()
    k = m.pop()
    target = m.top()
    _mutated(m, target, "SETITEM", pos)
    if isinstance(target, PDict):
        target.pairs.append((k, v))


@_op(b"u")
def _setitems(m: _Machine, pos: int) -> None:
    items = m.pop_mark()
    target = m.top()
    _mutated(m, target, "SETITEMS", pos)
    if len(items) % 2:
        raise ParseError("odd number of items for SETITEMS", pos)
    if isinstance(target, PDict):
        target.pairs.extend((items[i], items[i + 1]) for i in range(0, len(items), 2))


@_op(b"\x90")
def _additems(m: _Machine, pos: int) -> None:
    items = m.pop_mark()
    target = m.top()
    _mutated(m, target, "ADDITEMS", pos)
    if isinstance(target, PSet):
        target.items.extend(items)


# memo
def _put(m: _Machine, idx: int) -> None:
    if idx < 0:
        raise ValueError("negative memo index")
    m.memo[idx] = m.top()


def _get(m: _Machine, idx: int) -> None:
    if idx not in m.memo:
        raise KeyError(f"memo value {idx} was never stored")
    m.push(m.memo[idx])


@_op(b"p")
def _put_line(m: _Machine, pos: int) -> None:
    _put(m, int(m.line()))


@_op(b"q")
def _binput(m: _Machine, pos: int) -> None:
    _put(m, m.r.read_byte())


@_op(b"r")
def _long_binput(m: _Machine, pos: int) -> None:
    _put(m, m.u("<I", 4))


@_op(b"\x94")
def _memoize(m: _Machine, pos: int) -> None:
    _put(m, len(m.memo))


@_op(b"g")
def _get_line(m: _Machine, pos: int) -> None:
    _get(m, int(m.line()))


@_op(b"h")
def _binget(m: _Machine, pos: int) -> None:
    _get(m, m.r.read_byte())


@_op(b"j")
def _long_binget(m: _Machine, pos: int) -> None:
    _get(m, m.u("<I", 4))


# persistent ids and extensions
@_op(b"P")
def _persid(m: _Machine, pos: int) -> None:
    m.line()
    m.push(Opaque("persistent id"))


@_op(b"Q")
def _binpersid(m: _Machine, pos: int) -> None:
    m.pop()
    m.push(Opaque("persistent id"))


def _ext(m: _Machine, code: int, pos: int, op: str) -> None:
    m.finding(op, "copyreg", f"extension {code}", pos, Severity.HIGH,
              "an extension code names a global through the loader's copyreg registry, "
              "which cannot be resolved statically")
    m.push(Opaque("extension"))


@_op(b"\x82")
def _ext1(m: _Machine, pos: int) -> None:
    _ext(m, m.r.read_byte(), pos, "EXT1")


@_op(b"\x83")
def _ext2(m: _Machine, pos: int) -> None:
    _ext(m, m.u("<H", 2), pos, "EXT2")


@_op(b"\x84")
def _ext4(m: _Machine, pos: int) -> None:
    _ext(m, m.u("<i", 4), pos, "EXT4")


# globals and calls
def _text_operand(m: _Machine) -> str:
    return m.line().decode("utf-8")


@_op(b"c")
def _global(m: _Machine, pos: int) -> None:
    module = _text_operand(m)
    name = _text_operand(m)
    m.push(m.resolve("GLOBAL", module, name, pos))


@_op(b"\x93")
def _stack_global(m: _Machine, pos: int) -> None:
    name = m.pop()
    module = m.pop()
    if isinstance(module, str) and isinstance(name, str):
        m.push(m.resolve("STACK_GLOBAL", module, name, pos))
        return
    m.finding(
        "STACK_GLOBAL", _short(module), _short(name), pos, Severity.HIGH,
        "STACK_GLOBAL operands are not strings the scanner can resolve",
    )
    m.push(Opaque("unresolved global"))


@_op(b"i")
def _inst(m: _Machine, pos: int) -> None:
    module = _text_operand(m)
    name = _text_operand(m)
    cls = m.resolve("INST", module, name, pos)
    args = tuple(m.pop_mark())
    m.push(m.call("INST", cls, args, pos))


@_op(b"o")
def _obj(m: _Machine, pos: int) -> None:
    items = m.pop_mark()
    if not items:
        raise IndexError("OBJ without a class")
    m.push(m.call("OBJ", items[0], tuple(items[1:]), pos))


@_op(b"R")
def _reduce(m: _Machine, pos: int) -> None:
    args = m.pop()
    func = m.pop()
    m.push(m.call("REDUCE", func, args, pos))


@_op(b"\x81")
def _newobj(m: _Machine, pos: int) -> None:
    args = m.pop()
    cls = m.pop()
    m.push(m.call("NEWOBJ", cls, args, pos))


@_op(b"\x92")
def _newobj_ex(m: _Machine, pos: int) -> None:
    kwargs = m.pop()
    args = m.pop()
    cls = m.pop()
    m.push(m.call("NEWOBJ_EX", cls, (args, kwargs), pos))


@_op(b"b")
def _build(m: _Machine, pos: int) -> None:
    m.build(pos)
