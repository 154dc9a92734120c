"""The opcode handlers of the pickle-machine simulator, one per pickle opcode (protocols 0-5).

Each handler reads its operands, updates the stack, mark stack and memo of the machine the
way the unpickler does, and leaves every judgement (globals, calls, BUILD) to the machine.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bastion.artifacts.scan._types import Severity
from bastion.artifacts.scan._values import (
    KEEP_BYTES,
    Global,
    Opaque,
    ParseError,
    PDict,
    PSet,
    Stop,
    short,
)

if TYPE_CHECKING:
    from bastion.artifacts.scan._pickle import _Machine

__all__ = ["DISPATCH"]

_Handler = Callable[["_Machine", int], None]
DISPATCH: dict[int, _Handler] = {}


def _op(code: bytes) -> Callable[[_Handler], _Handler]:
    def register(fn: _Handler) -> _Handler:
        DISPATCH[code[0]] = fn
        return fn

    return register


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
    raise Stop


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


def _c_literal(opcode: bytes, line: bytes, pos: int) -> Any:
    """The value the C unpickler makes of a text-operand literal (INT, LONG, FLOAT, STRING,
    UNICODE), by having it read that one opcode and nothing else.

    Its rules are not Python's ``int()``/``float()``: ``strtol`` with base 0 (``I007`` is 7,
    ``I0x1f`` is 31), operands cut at a NUL byte, ``I01`` is True. A two-opcode pickle of a
    literal and STOP imports and calls nothing, so asking the parser itself is safe and exact.
    """
    try:
        return pickle.loads(opcode + line + b"\n.", encoding="latin1")
    except Exception as exc:  # the C unpickler's errors are of many types
        raise ParseError(f"{opcode.decode()} operand {line[:40]!r}: {exc}", pos) from exc


@_op(b"I")
def _int(m: _Machine, pos: int) -> None:
    m.push(_c_literal(b"I", m.line(), pos))


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
    m.push(_c_literal(b"L", m.line(), pos))


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
    m.push(_c_literal(b"F", m.line(), pos))


@_op(b"G")
def _binfloat(m: _Machine, pos: int) -> None:
    m.push(struct.unpack(">d", m.r.read(8))[0])


@_op(b"S")
def _string(m: _Machine, pos: int) -> None:
    m.push(_c_literal(b"S", m.line(), pos))


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
    m.push(_c_literal(b"V", m.line(), pos))


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


def _c_decimal(line: bytes) -> int:
    """A memo key as the C unpickler reads it: ``PyLong_FromString(s, NULL, 10)`` on the line
    as a C string (so cut at a NUL byte; spaces and underscores allowed, as in ``int()``)."""
    return int(line.split(b"\0", 1)[0], 10)


@_op(b"p")
def _put_line(m: _Machine, pos: int) -> None:
    _put(m, _c_decimal(m.line()))


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
    _get(m, _c_decimal(m.line()))


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
    pid = m.pop()
    if isinstance(pid, tuple) and len(pid) >= 2 and pid[0] == "module" and isinstance(
        pid[1], Global
    ):
        # legacy torch files: persistent_load returns the module class named in the id,
        # which was itself judged when its GLOBAL was read
        m.push(pid[1])
        return
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
        "STACK_GLOBAL", short(module), short(name), pos, Severity.HIGH,
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
