"""Differential testing: the scanner's view of a file against the real loaders' parsers.

Files of every format are generated and mutated (seeded, so a failure reproduces; set
``BASTION_DIFF_EXAMPLES`` to run more). Each mutant is given to the real parser of every
loader that would read it: the C unpickler (``pickle.Unpickler`` with ``find_class``
recording each global it resolves instead of importing it), numpy's ``.npy`` reader and
``np.load`` on npz (their ``pickle.load`` routed to the same recorder), ``zipfile``, torch's
zip reader (``torch._C.PyTorchFileReader``), ``tarfile``, and ``joblib.load`` (its
``NumpyUnpickler`` recording too). The property, for every mutant:

- if any loader would resolve a global that is not on the allowlist, the scanner says
  ``unsafe`` or ``error`` (never ``clean``, never ``skipped``);
- if any loader would resolve any global at all, the file is not ``skipped``.

So whatever the scanner cannot read the way a loader does must come out ``error``.
"""

from __future__ import annotations

import _compat_pickle
import contextlib
import importlib.util
import io
import os
import pickle
import pickletools
import random
import re
import struct
import sys
import tarfile
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator

import joblib
import numpy as np
import pytest
import torch

from bastion.artifacts.scan import Verdict
from bastion.artifacts.scan._allowlist import lookup
from bastion.artifacts.scan._opcodes import _c_decimal
from bastion.artifacts.scan._scanner import _Context, scan_stream
from bastion.artifacts.scan._stream import Budget

N = int(os.environ.get("BASTION_DIFF_EXAMPLES", "150"))
CALL = b"cos\ngetcwd\n)R"


class _Call:
    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (os.getcwd, ())


# -- the oracle: what the real parsers would resolve -----------------------------------------
class _Stub:
    """Stands in for anything a loader would import or build: records nothing, runs nothing."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __call__(self, *args: object, **kwargs: object) -> _Stub:
        return _Stub()

    def __setstate__(self, state: object) -> None:
        pass

    def __reduce__(self) -> tuple[object, ...]:  # pragma: no cover - never pickled
        return (_Stub, ())

    def append(self, v: object) -> None:
        pass

    def extend(self, v: object) -> None:
        pass

    def __setitem__(self, k: object, v: object) -> None:
        pass

    def add(self, v: object) -> None:
        pass


class _Seen:
    def __init__(self) -> None:
        self.names: list[tuple[str, str, int]] = []

    def record(self, module: str, name: str, proto: int) -> None:
        if _importable(module, name):  # any other name fails to import: nothing runs
            self.names.append((module, name, proto))

    def unsafe(self) -> list[tuple[str, str]]:
        out = []
        for module, name, proto in self.names:
            if proto < 3:
                if (module, name) in _compat_pickle.NAME_MAPPING:
                    module, name = _compat_pickle.NAME_MAPPING[(module, name)]
                elif module in _compat_pickle.IMPORT_MAPPING:
                    module = _compat_pickle.IMPORT_MAPPING[module]
            if lookup(module, name) is None:
                out.append((module, name))
        return out


def _importable(module: str, name: str) -> bool:
    """Whether the default find_class could import it: identifiers, and a top-level module
    that exists (found without importing anything)."""
    if not all(part.isidentifier() for part in f"{module}.{name}".split(".")):
        return False
    top = module.split(".")[0]
    return top in sys.modules or importlib.util.find_spec(top) is not None


def _recording_unpickler(seen: _Seen, proto: int) -> type[pickle.Unpickler]:
    class Recording(pickle.Unpickler):  # the C unpickler: find_class is its only import
        def find_class(self, module: str, name: str) -> object:
            seen.record(module, name, proto)
            if not _importable(module, name):
                # the default find_class imports by name: this one fails, nothing runs
                raise ModuleNotFoundError(module)
            return _Stub

        def persistent_load(self, pid: object) -> object:
            return _Stub()

    return Recording


def _unpickle_all(data: bytes, seen: _Seen) -> None:
    """pickle.load, then again while bytes remain (torch's legacy loader reads five)."""
    f = io.BytesIO(data)
    for _ in range(8):
        if f.tell() >= len(data):
            return
        try:
            here = f.tell()
            proto = data[here + 1] if data[here:here + 1] == b"\x80" else 0
            _recording_unpickler(seen, proto)(f, encoding="latin1").load()
        except Exception:  # the loader stops here; what it resolved before counts
            return


def _zip_readings(data: bytes, seen: _Seen) -> None:
    with contextlib.suppress(Exception):
        zf = zipfile.ZipFile(io.BytesIO(data))
        names = zf.namelist()
        is_torch = any(n.endswith("data.pkl") for n in names)
        for name in names:
            if is_torch and re.fullmatch(r"(.*/)?(data/\d+|version|byteorder)", name):
                continue  # torch reads storages and version records as bytes, never unpickles
            try:
                member = zf.read(name)
            except Exception:  # a member zipfile cannot read is not loaded
                continue
            _unpickle_all(member, seen)
            _npy_reading(member, seen)
    with contextlib.suppress(Exception):
        reader = torch._C.PyTorchFileReader(io.BytesIO(data))
        for record in reader.get_all_records():
            if record.endswith(".pkl"):
                raw = reader.get_record(record)
                _unpickle_all(bytes(raw), seen)


def _npy_reading(data: bytes, seen: _Seen) -> None:
    if not data.startswith(b"\x93NUMPY"):
        return
    fmt = np.lib.format
    impl = getattr(np.lib, "_format_impl", fmt)

    class _PickleShim:
        @staticmethod
        def load(f: object, **kw: object) -> object:
            return _recording_unpickler(seen, 2)(f, encoding="latin1").load()

    saved = impl.pickle
    impl.pickle = _PickleShim
    try:
        with contextlib.suppress(Exception):
            fmt.read_array(io.BytesIO(data), allow_pickle=True)
    finally:
        impl.pickle = saved


def _tar_reading(data: bytes, seen: _Seen) -> None:
    with contextlib.suppress(Exception), tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        for info in tf:
            stream = tf.extractfile(info) if info.isfile() else None
            if stream is not None:
                _unpickle_all(stream.read(), seen)


def _joblib_reading(data: bytes, seen: _Seen) -> None:
    from joblib import numpy_pickle

    def find_class(self: object, module: str, name: str) -> object:
        seen.record(module, name, getattr(self, "proto", 0))
        if not _importable(module, name):
            raise ModuleNotFoundError(module)
        if lookup(module, name) is not None:
            return pickle._Unpickler.find_class(self, module, name)  # type: ignore[arg-type]
        return _Stub

    saved = numpy_pickle.NumpyUnpickler.find_class
    numpy_pickle.NumpyUnpickler.find_class = find_class  # type: ignore[method-assign]
    try:
        with contextlib.suppress(Exception), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            joblib.load(io.BytesIO(data))
    finally:
        numpy_pickle.NumpyUnpickler.find_class = saved  # type: ignore[method-assign]


def _oracle(data: bytes) -> _Seen:
    seen = _Seen()
    _unpickle_all(data, seen)
    _npy_reading(data, seen)
    _zip_readings(data, seen)
    _tar_reading(data, seen)
    _joblib_reading(data, seen)
    return seen


def _scan(data: bytes, name: str = "file.bin") -> Verdict:
    ctx = _Context(5, Budget(1 << 28))
    return scan_stream(io.BytesIO(data), name, ctx, 0, (name,)).verdict


def _check(data: bytes, what: str) -> None:
    seen = _oracle(data)
    verdict = _scan(data)
    if seen.unsafe():
        assert verdict in (Verdict.UNSAFE, Verdict.ERROR), (
            f"{what}: a loader resolves {seen.unsafe()} but the scanner says {verdict.value}: "
            f"{data[:120]!r}"
        )
    if seen.names:
        assert verdict is not Verdict.SKIPPED, (what, seen.names, data[:120])


# -- mutation ---------------------------------------------------------------------------------
_SNIPPETS = [b"I007\n", b"I12\x00junk\n", b"I 5\n", b"I0x1f\n", b"I1_0\n", b"L12\x00z\n",
             b"F1.5\x00x\n", b"p 7\n", b"g0_0\n", b"p0\n", b"\x8f", b"\x8e" + struct.pack("<Q", 2)
             + b"ab", b"N", b"0", b"(", b")", b"]", b"}", b"cos\ngetcwd\n", b"cposix\ngetcwd\n",
             b"\x8c\x02os\x8c\x06getcwd\x93", b")R", b"b", b"S'os'\n", b"V\\u0041\n",
             b"\x80\x02", b"\x95" + struct.pack("<Q", 5), b"."]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(6)
        pos = rng.randrange(len(buf) + 1)
        if kind == 0 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif kind == 1:
            buf[pos:pos] = rng.choice(_SNIPPETS)
        elif kind == 2 and len(buf) > 2:
            end = min(len(buf), pos + rng.randint(1, 8))
            del buf[pos:end]
        elif kind == 3 and len(buf) > 2:
            end = min(len(buf), pos + rng.randint(1, 16))
            buf[pos:pos] = buf[pos:end]
        elif kind == 4:
            buf[:0] = rng.choice(_SNIPPETS) + b"0"
        else:
            buf[pos:pos] = b"0" + CALL
    return bytes(buf)


def _pickles() -> list[bytes]:
    values: list[object] = [{"w": [1.0, 2.5], "n": 3}, [1, (2, 3), {4}, frozenset({5})],
                            OrderedDict(a=b"xyz", b=bytearray(b"q")), 2**70, "é",
                            {"p": _Call()}, np.arange(4.0)]
    return [pickle.dumps(v, protocol=p) for v in values for p in range(6)]


# -- the tests --------------------------------------------------------------------------------
def test_memo_keys_read_as_the_c_unpickler_reads_them() -> None:
    rng = random.Random(1)
    alphabet = b"0123456789 _-+x\x00\tab"
    for _ in range(N * 2):
        op = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 5)))
        try:
            ours: int | None = _c_decimal(op)
        except ValueError:
            ours = None
        if ours is None or ours < 0:
            with pytest.raises(Exception):  # the C unpickler raises several types
                pickle.loads(b"I5\np" + op + b"\n.")
        else:
            assert pickle.loads(b"I5\np" + op + b"\n0g" + str(ours).encode() + b"\n.") == 5, op


def test_mutated_pickles_of_every_protocol() -> None:
    rng = random.Random(2)
    base = _pickles()
    for i in range(N * 3):
        _check(_mutate(rng, rng.choice(base)), f"pickle mutant {i}")


def _npy_files(rng: random.Random) -> Iterator[bytes]:
    spellings = ["'|O'", "'O'", "'O8'", "'object'", "'<f8'", "'|u1'", "[('a', 'O')]",
                 "[('a', '<i4'), ('b', [('c', 'object')])]", "'=O'", "'<U3'"]
    while True:
        descr = rng.choice(spellings)
        version = rng.choice([(1, 0), (2, 0), (3, 0)])
        header = f"{{'descr': {descr}, 'fortran_order': False, 'shape': (1,), }}"
        header += " " * (63 - len(header) % 64) + "\n"
        size = struct.pack("<H" if version == (1, 0) else "<I", len(header))
        body = pickle.dumps([_Call()] if "O" in descr or "object" in descr else 0.0, 2)
        yield b"\x93NUMPY" + bytes(version) + size + header.encode() + body


def test_mutated_numpy_files() -> None:
    rng = random.Random(3)
    gen = _npy_files(rng)
    for i in range(N):
        data = next(gen)
        if rng.random() < 0.7:
            data = _mutate(rng, data)
        _check(data, f"npy mutant {i}")


def _zip_bytes(rng: random.Random) -> bytes:
    buf = io.BytesIO()
    method = rng.choice([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                         zipfile.ZIP_LZMA])
    with zipfile.ZipFile(buf, "w", method) as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"w": 1}, 2))
        zf.writestr(rng.choice(["archive/data/0", "x.pkl", "evil/", "m.npy", "a/b.bin"]),
                    rng.choice([pickle.dumps(_Call(), rng.randrange(6)),
                                next(_npy_files(rng))]))
        zf.writestr("archive/version", b"3\n")
    return buf.getvalue()


def _mutate_zip(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    heads = [i for i in range(len(buf) - 4) if buf[i:i + 2] == b"PK"
             and buf[i + 2:i + 4] in (b"\x01\x02", b"\x03\x04")]
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(7)
        if kind == 0 and heads:  # flag bits, in a local or central header
            h = rng.choice(heads)
            at = h + (8 if buf[h + 2] == 1 else 6)
            struct.pack_into("<H", buf, at, rng.choice([0, 1, 8, 0x800, 0x809]))
        elif kind == 1 and heads:  # compression method
            h = rng.choice(heads)
            at = h + (10 if buf[h + 2] == 1 else 8)
            struct.pack_into("<H", buf, at, rng.choice([0, 8, 12, 14, 99]))
        elif kind == 2 and heads:  # sizes
            h = rng.choice(heads)
            at = h + (20 if buf[h + 2] == 1 else 18) + rng.choice([0, 4])
            struct.pack_into("<I", buf, at, rng.randrange(0, 300))
        elif kind == 3:  # junk before the archive
            buf[:0] = rng.choice([b"junk", b"\x80\x02N.", b"#!/bin/sh\n", b"0" + CALL + b"."])
        elif kind == 4:  # a duplicate central record
            cd = buf.find(b"PK\x01\x02")
            eocd = buf.rfind(b"PK\x05\x06")
            if 0 <= cd < eocd:
                nlen, xlen, clen = struct.unpack_from("<HHH", buf, cd + 28)
                rec = bytes(buf[cd:cd + 46 + nlen + xlen + clen])
                buf[eocd:eocd] = rec
                eocd += len(rec)
                count = struct.unpack_from("<H", buf, eocd + 10)[0] + 1
                struct.pack_into("<HHI", buf, eocd + 8, count, count,
                                 struct.unpack_from("<I", buf, eocd + 12)[0] + len(rec))
        else:
            buf = bytearray(_mutate(rng, bytes(buf)))
    return bytes(buf)


def test_mutated_zip_npz_and_torch_archives() -> None:
    rng = random.Random(4)
    torch_zips = []
    for obj in ({"w": torch.ones(2)}, {"w": torch.ones(2), "p": _Call()}):
        b = io.BytesIO()
        torch.save(obj, b)
        torch_zips.append(b.getvalue())
    for i in range(N):
        data = rng.choice(torch_zips) if rng.random() < 0.3 else _zip_bytes(rng)
        _check(_mutate_zip(rng, data), f"zip mutant {i}")


def test_mutated_tar_files_and_tar_pickle_polyglots() -> None:
    rng = random.Random(5)
    for i in range(N):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=rng.choice(
                [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])) as tf:
            payload = pickle.dumps(rng.choice([{"a": 1}, _Call()]), rng.randrange(6))
            name = rng.choice(["model/data.pkl", (b"0" + CALL + b".").decode("latin-1"),
                               "sys_info", "x"])
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
        data = buf.getvalue()
        if rng.random() < 0.5:
            data = _mutate(rng, data)
        _check(data, f"tar mutant {i}")


_JOBLIB_DTYPES = [np.float64, np.int8, "U3", "S2", "V3", "datetime64[s]", np.complex64,
                  np.dtype([("x", "<f4"), ("y", "<i8", (2,))]), object]


def test_mutated_joblib_files() -> None:
    rng = random.Random(6)
    for i in range(N):
        dtype = rng.choice(_JOBLIB_DTYPES)
        arr = np.zeros(tuple(rng.randint(0, 3) for _ in range(rng.randint(0, 2))), dtype=dtype)
        obj = rng.choice([{"a": arr, "p": _Call()}, {"a": arr}, [arr, _Call(), arr]])
        buf = io.BytesIO()
        compress = rng.choice([0, 0, 0, ("zlib", 1), ("gzip", 1), ("bz2", 1), ("xz", 1)])
        joblib.dump(obj, buf, compress=compress, protocol=rng.randrange(6))
        data = buf.getvalue()
        if compress == 0 and rng.random() < 0.6:
            data = _mutate(rng, data)
        _check(data, f"joblib mutant {i}")


def test_safetensors_headers_that_are_pickles() -> None:
    rng = random.Random(7)
    for i in range(N // 2):
        call = b"0" + CALL + b"."
        first = rng.choice([b"I1", b"I0", b"N0", b"\x80\x02"])
        n = int.from_bytes(first + b"\x00" * (8 - len(first)), "little")
        if n > 1 << 16:
            n = 200
        header = b'{"t": {"dtype": "U8", "shape": [%d], "data_offsets": [0, %d]}}' % (
            len(call), len(call))
        header = header + b" " * max(0, n - len(header) - 1) + b"\n"
        data = struct.pack("<Q", n) + header + call
        if rng.random() < 0.5:
            data = _mutate(rng, data)
        _check(data, f"safetensors mutant {i}")


def test_the_oracle_sees_a_payload_in_every_container() -> None:
    """The harness can fail: each generator's payload is resolved by the oracle."""
    assert _oracle(pickle.dumps(_Call(), 2)).unsafe()
    assert _oracle(next(_npy_files(random.Random(0)))).names is not None
    b = io.BytesIO()
    torch.save({"p": _Call()}, b)
    assert _oracle(b.getvalue()).unsafe()
    b = io.BytesIO()
    joblib.dump({"a": np.zeros(3), "p": _Call()}, b)
    assert _oracle(b.getvalue()).unsafe()


def _unused(fn: Callable[..., object]) -> None:  # pragma: no cover - keeps pickletools used
    pickletools.genops(b"")
