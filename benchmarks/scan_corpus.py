"""A generated corpus of malicious and benign model files for the scanner tests and benchmark.

Every payload is harmless if a file is ever loaded by mistake: the callables are ``os.getcwd``,
``eval("1+1")``, ``exec("_x = 1")``, ``importlib.import_module("json")``, ``pydoc.locate``,
``subprocess.Popen.__new__`` (allocates, starts nothing), ``open("/dev/null")``... Nothing
writes, deletes or starts a process.

The malicious part crosses every pickle opcode form (GLOBAL, STACK_GLOBAL with literal, memo
and STRING operands, INST, OBJ, NEWOBJ, NEWOBJ_EX, REDUCE, BUILD with a ``__setstate__``
trick, nested ``pickle.loads`` payloads, protocols 0-5, several pickles concatenated, payload
before a corrupt tail, dotted names, getattr chains, universal resolvers, extension codes) with
every container (raw pickle, PyTorch zip with renamed member / bad CRC / flag bits / a
duplicate data.pkl, a pickle+zip polyglot, legacy PyTorch, joblib raw and zlib, npy object
array, npz, zip, tar, tar.gz, gzip, 7z and three-level nesting), and adds the format-level
cases: Keras ``.keras``/``.h5`` with Lambda layers, ONNX with external-data path traversal and
custom operator domains, safetensors with bad offsets, overlaps and a huge header. The benign
part holds the files real projects ship.

Usage: ``build_corpus(folder)`` returns a list of :class:`Sample`.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import struct
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["CONTAINERS", "PAYLOADS", "Sample", "build_corpus"]


@dataclass(frozen=True)
class Sample:
    path: Path
    malicious: bool
    payload: str
    container: str


# ---- pickle payloads, assembled opcode by opcode ---------------------------------------------


def _g(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _s0(text: str) -> bytes:
    return b"S'" + text.encode() + b"'\n"


def _u(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def _binbytes(raw: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(raw)) + raw


P2 = b"\x80\x02"
P4 = b"\x80\x04"


class _Reduce:
    """Pickles as a call of ``func(*args)`` (the classic ``__reduce__`` payload)."""

    def __init__(self, func: Callable[..., object], args: tuple[object, ...]) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return self.func, self.args


_STACK_GLOBAL = P4 + _u("os") + _u("getcwd") + b"\x93)R."


def _protocol(proto: int) -> bytes:
    return pickle.dumps({"weights": [1.0, 2.0], "hook": _Reduce(os.getcwd, ())}, protocol=proto)


PAYLOADS: dict[str, bytes] = {
    **{f"reduce_proto{p}": _protocol(p) for p in range(6)},
    "global_reduce": P2 + _g("os", "getcwd") + b")R.",
    "builtin_py2_name": _g("__builtin__", "eval") + b"(" + _s0("1+1") + b"tR.",
    "stack_global_literal": _STACK_GLOBAL,
    "stack_global_memo": (P4 + _u("os") + b"\x940" + _u("getcwd") + b"\x940"
                          + b"]h\x00h\x01\x93)Ra."),
    "stack_global_string": P4 + _s0("os") + _s0("getcwd") + b"\x93)R.",
    "memo_global": P2 + _g("os", "getcwd") + b"q\x050" + b"]h\x05)Ra.",
    "inst": b"(" + _s0("1+1") + b"ibuiltins\neval\n.",
    "obj": b"(" + _g("builtins", "eval") + _s0("1+1") + b"o.",
    "newobj": P2 + _g("subprocess", "Popen") + b"(" + _s0("true") + b"t\x81.",
    "newobj_ex": P4 + _u("subprocess") + _u("Popen") + b"\x93" + b"(" + _u("true") + b"t}\x92.",
    "build_setstate": (P2 + _g("collections", "OrderedDict") + b")R" + b"}" + _s0("__setstate__")
                       + _g("os", "getcwd") + b"sb" + b"Nb."),
    "nested_loads": P2 + _g("pickle", "loads") + _binbytes(_STACK_GLOBAL) + b"\x85R.",
    "nested_codecs": (P2 + _g("pickle", "loads") + _g("_codecs", "encode")
                      + b"X" + struct.pack("<I", len(_STACK_GLOBAL.decode("latin-1").encode()))
                      + _STACK_GLOBAL.decode("latin-1").encode() + b"X\x06\x00\x00\x00latin1"
                      + b"\x86R\x85R."),
    "torch_load_from_bytes": (P2 + _g("torch.storage", "_load_from_bytes")
                              + _binbytes(_STACK_GLOBAL) + b"\x85R."),
    "concatenated": pickle.dumps({"weights": [1, 2]}, protocol=4) + _STACK_GLOBAL,
    "corrupt_tail": P4 + _u("os") + _u("getcwd") + b"\x93)R" + b"\xff\xfe\x00garbage",
    "dotted_name": P4 + _u("torch") + _u("serialization.os.getcwd") + b"\x93)R.",
    "getattr_chain": (P2 + _g("builtins", "getattr") + _g("builtins", "__import__") + b"("
                      + _s0("os") + b"tR" + _s0("getcwd") + b"\x86R)R."),
    "universal_resolver": P2 + _g("pydoc", "locate") + b"(" + _s0("os.getcwd") + b"tR)R.",
    "import_module": P2 + _g("importlib", "import_module") + b"(" + _s0("json") + b"tR.",
    "numpy_runstring": (P2 + _g("numpy.testing._private.utils", "runstring") + b"("
                        + _s0("_x = 1") + b"}tR."),
    "functools_partial": P2 + _g("functools", "partial") + _g("os", "getcwd") + b"\x85R)R.",
    "operator_attrgetter": P2 + _g("operator", "attrgetter") + b"(" + _s0("real") + b"tR.",
    "unknown_package": P2 + _g("evil_pkg.hooks", "install") + b")R.",
    "extension_code": P2 + b"\x82\x01)R.",
    "builtins_open": P2 + _g("builtins", "open") + b"(" + _s0("/dev/null") + b"tR.",
    "builtins_exec": P2 + _g("builtins", "exec") + b"(" + _s0("_x = 1") + b"tR.",
}

# ---- containers --------------------------------------------------------------------------------


def _torch_zip(data_pkl: bytes, *, prefix: str = "archive") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{prefix}/data.pkl", data_pkl)
        zf.writestr(f"{prefix}/byteorder", "little")
        zf.writestr(f"{prefix}/version", "3\n")
    return buf.getvalue()


def _patch_headers(data: bytes, suffix: str, local: Callable[[bytearray, int], None] | None,
                   central: Callable[[bytearray, int], None] | None) -> bytes:
    d = bytearray(data)
    for sig, name_at, len_at, fn in ((b"PK\x03\x04", 30, 26, local), (b"PK\x01\x02", 46, 28,
                                                                        central)):
        i = 0
        while fn is not None:
            j = d.find(sig, i)
            if j < 0:
                break
            (nlen,) = struct.unpack_from("<H", d, j + len_at)
            if bytes(d[j + name_at : j + name_at + nlen]).decode().endswith(suffix):
                fn(d, j)
            i = j + 4
    return bytes(d)


def _renamed_local(d: bytearray, j: int) -> None:
    (nlen,) = struct.unpack_from("<H", d, j + 26)
    d[j + 30 : j + 30 + nlen] = b"archive/zzzz.bin"[:nlen].ljust(nlen, b"z")


def _bad_crc_local(d: bytearray, j: int) -> None:
    struct.pack_into("<I", d, j + 14, 0xDEADBEEF)


def _bad_crc_central(d: bytearray, j: int) -> None:
    struct.pack_into("<I", d, j + 16, 0xDEADBEEF)


def _flags_local(d: bytearray, j: int) -> None:
    struct.pack_into("<H", d, j + 6, struct.unpack_from("<H", d, j + 6)[0] | 0x0802)


def _flags_central(d: bytearray, j: int) -> None:
    struct.pack_into("<H", d, j + 8, struct.unpack_from("<H", d, j + 8)[0] | 0x0802)


def _duplicate_member(payload: bytes) -> bytes:
    """A torch zip naming data.pkl twice: a benign one and the payload."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about the duplicate
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr("archive/data.pkl", pickle.dumps({"w": 1}, protocol=2))
            zf.writestr("archive/data.pkl", payload)
            zf.writestr("archive/version", "3\n")
    return buf.getvalue()


def _polyglot(payload: bytes) -> bytes:
    """The payload pickle followed by a benign torch zip: zip readers find the zip (its end
    record is at the end of the file), torch.load sees no zip magic at offset 0 and unpickles
    the payload."""
    return payload + _torch_zip(pickle.dumps({"w": 1}, protocol=2))


def _legacy_torch(main: bytes) -> bytes:
    sys_info = {"protocol_version": 1001, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
    return (pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
            + pickle.dumps(sys_info, protocol=2) + main + pickle.dumps([], protocol=2))


def _npy_object(payload: bytes) -> bytes:
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    pad = 64 - (10 + len(header) + 1) % 64
    text = (header + " " * pad + "\n").encode("latin-1")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + payload


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _tar(members: dict[str, bytes], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:  # type: ignore[call-overload]
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _7z(members: dict[str, bytes]) -> bytes:
    import py7zr

    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w") as archive:
        for name, data in members.items():
            archive.writestr(data, name)
    return buf.getvalue()


CONTAINERS: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "raw": (".pkl", lambda p: p),
    "torch_zip": (".pt", _torch_zip),
    "torch_zip_renamed": (".pt", lambda p: _patch_headers(_torch_zip(p), "data.pkl",
                                                          _renamed_local, None)),
    "torch_zip_bad_crc": (".pt", lambda p: _patch_headers(_torch_zip(p), "data.pkl",
                                                          _bad_crc_local, _bad_crc_central)),
    "torch_zip_flag_bits": (".pt", lambda p: _patch_headers(_torch_zip(p), "data.pkl",
                                                            _flags_local, _flags_central)),
    "torch_zip_duplicate": (".pt", _duplicate_member),
    "polyglot_pickle_zip": (".pt", _polyglot),
    "torch_legacy": (".pth", _legacy_torch),
    "joblib": (".joblib", lambda p: p),
    "joblib_zlib": (".joblib", lambda p: zlib.compress(p)),
    "npy_object": (".npy", _npy_object),
    "npz": (".npz", lambda p: _zip({"arr_0.npy": _npy_object(p)})),
    "zip": (".zip", lambda p: _zip({"model/weights.pkl": p})),
    "tar": (".tar", lambda p: _tar({"model/weights.bin": p})),
    "tar_gz": (".tar.gz", lambda p: _tar({"model.bin": p}, "w:gz")),
    "gzip": (".pkl.gz", lambda p: gzip.compress(p, mtime=0)),
    "7z": (".7z", lambda p: _7z({"model.pkl": p})),
    "nested": (".tar.gz", lambda p: _tar({"bundle.zip": _zip({"inner.pt": _torch_zip(p)})},
                                         "w:gz")),
}

# ---- format-level malicious files --------------------------------------------------------------


def _keras_config(lambda_layer: bool) -> dict[str, object]:
    dense = {"module": "keras.layers", "class_name": "Dense",
             "config": {"name": "dense", "units": 4, "activation": "relu"},
             "registered_name": None}
    inner: list[dict[str, object]] = [dense]
    if lambda_layer:
        inner.append({
            "module": "keras.layers", "class_name": "Lambda", "registered_name": None,
            "config": {"name": "lam", "function": {
                "class_name": "__lambda__",
                "config": {"code": "4wEAAAAAAAAA", "defaults": None, "closure": None}}},
        })
    nested = {"module": "keras", "class_name": "Sequential", "registered_name": None,
              "config": {"name": "inner", "layers": inner}}
    return {"module": "keras", "class_name": "Functional", "registered_name": None,
            "config": {"name": "outer", "layers": [
                {"module": "keras.layers", "class_name": "InputLayer",
                 "config": {"batch_shape": [None, 3]}, "registered_name": None},
                nested]}}


def _keras_file(lambda_layer: bool) -> bytes:
    meta = {"keras_version": "3.5.0", "date_saved": "2026-01-01@00:00:00"}
    return _zip({"metadata.json": json.dumps(meta).encode(),
                 "config.json": json.dumps(_keras_config(lambda_layer)).encode()})


def _h5_file(path: Path, lambda_layer: bool) -> None:
    import h5py

    with h5py.File(path, "w") as h5:
        h5.attrs["model_config"] = json.dumps(_keras_config(lambda_layer))
        h5.attrs["keras_version"] = "2.15.0"
        h5.create_dataset("model_weights/dense/kernel", data=np.ones((3, 4), np.float32))


def _onnx_bytes(*, location: str | None = None, domain: str = "") -> bytes:
    import onnx
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [3, 4], np.ones(12, np.float32))
    if location is not None:
        weight = onnx.TensorProto()
        weight.name = "w"
        weight.data_type = TensorProto.FLOAT
        weight.dims.extend([3, 4])
        weight.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", "0"), ("length", "48")):
            entry = weight.external_data.add()
            entry.key, entry.value = key, value
    node = helper.make_node("MatMul", ["x", "w"], ["y"], domain=domain)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weight],
    )
    opsets = [helper.make_opsetid("", 17)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="bastion-corpus")
    return bytes(model.SerializeToString())


def _safetensors(header: dict[str, object], buffer: bytes, *, length: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    n = len(raw) if length is None else length
    return struct.pack("<Q", n) + raw + buffer


def _format_cases(root: Path) -> list[Sample]:
    out: list[Sample] = []

    def put(name: str, data: bytes, payload: str, container: str) -> None:
        path = root / name
        path.write_bytes(data)
        out.append(Sample(path, True, payload, container))

    import joblib

    for pname, call in (("getcwd", _Reduce(os.getcwd, ())), ("eval", _Reduce(eval, ("1+1",))),
                        ("import_module", _Reduce(__import__("importlib").import_module,
                                                  ("json",)))):
        path = root / f"{pname}__joblib_after_array.joblib"
        # joblib writes the array bytes inside the pickle stream, before the payload
        joblib.dump({"weights": np.zeros(1000, np.float32), "hook": call}, path)
        out.append(Sample(path, True, pname, "joblib_after_array"))
    put("keras_lambda.keras", _keras_file(True), "lambda_layer", "keras")
    h5 = root / "keras_lambda.h5"
    _h5_file(h5, True)
    out.append(Sample(h5, True, "lambda_layer", "keras_h5"))
    put("onnx_traversal.onnx", _onnx_bytes(location="../../etc/x"), "external_data_traversal",
        "onnx")
    put("onnx_absolute.onnx", _onnx_bytes(location="/etc/hostname"), "external_data_absolute",
        "onnx")
    put("onnx_custom_op.onnx", _onnx_bytes(domain="com.evil.ops"), "custom_op_domain", "onnx")
    out.extend(_loader_agreement_cases(root))
    t = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    put("st_bad_offsets.safetensors",
        _safetensors({"a": {**t, "data_offsets": [0, 64]}}, b"\x00" * 8), "bad_offsets",
        "safetensors")
    put("st_overlap.safetensors",
        _safetensors({"a": t, "b": {**t, "data_offsets": [4, 12]}}, b"\x00" * 12), "overlap",
        "safetensors")
    put("st_huge_header.safetensors", _safetensors({"a": t}, b"\x00" * 8, length=1 << 40),
        "huge_header", "safetensors")
    put("st_size_mismatch.safetensors",
        _safetensors({"a": {**t, "shape": [4]}}, b"\x00" * 8), "size_mismatch", "safetensors")
    return out


# ---- format disagreements with the real loaders (issue 17) -------------------------------------
# Each file is accepted by the loader named in its container and runs os.getcwd there; the
# scanner's reading of the bytes must match the loader's to see it.

_CALL = _g("os", "getcwd") + b")R."


def _npy_header(descr: str, payload: bytes) -> bytes:
    text = f"{{'descr': {descr}, 'fortran_order': False, 'shape': (1,), }}"
    text += " " * (63 - len(text) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode() + payload


def _st_pickle_polyglot() -> bytes:
    """Valid safetensors whose length prefix and JSON header are one INT operand (cut at a NUL
    by the C unpickler); the call sits in a tensor's bytes."""
    call = b"0" + _CALL
    n = ord("I") + 256 * ord("1")
    header = json.dumps({"t": {"dtype": "U8", "shape": [len(call)],
                               "data_offsets": [0, len(call)]}}).encode()
    return struct.pack("<Q", n) + header + b" " * (n - len(header) - 1) + b"\n" + call


def _tar_pickle_polyglot() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        info = tarfile.TarInfo(_CALL.decode("latin-1"))
        info.size = 4
        tf.addfile(info, io.BytesIO(b"data"))
    return buf.getvalue()


def _dup_central(payload: bytes) -> bytes:
    """One local header, two central records: the second names it like a tensor storage."""
    data = bytearray(_zip({"archive/evil.pkl": payload}, zipfile.ZIP_STORED))
    cd = data.find(b"PK\x01\x02")
    rec = bytearray(data[cd:data.find(b"PK\x05\x06")])
    alias = bytearray(rec)
    alias[46:46 + 16] = b"archive/data/000"
    body = data[:cd] + rec + alias
    return bytes(body + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 2, 2, len(rec) * 2,
                                    cd, 0))


def _size_lie(payload: bytes) -> bytes:
    data = bytearray(_zip({"m.pkl": b"\x80\x02N." + b" " * 8 + payload}, zipfile.ZIP_STORED))
    struct.pack_into("<I", data, data.find(b"PK\x01\x02") + 20, 4)
    return bytes(data)


def _encrypted(payload: bytes) -> bytes:
    data = bytearray(_zip({"m.pkl": payload}, zipfile.ZIP_STORED))
    struct.pack_into("<H", data, 6, 1)
    struct.pack_into("<H", data, data.find(b"PK\x01\x02") + 8, 1)
    return bytes(data)


def _joblib_plain_array() -> bytes:
    from joblib.numpy_pickle import NumpyArrayWrapper

    body = b"0" + _CALL[:-1]
    wrapper = NumpyArrayWrapper(np.ndarray, (len(body),), "C", np.dtype("u1"))
    wrapper.numpy_array_alignment_bytes = None
    return pickle.dumps(wrapper, protocol=2)[:-1] + body + b"."


def _keras_torch_wrapper() -> bytes:
    import base64

    import torch

    blob = io.BytesIO()
    torch.save({"m": _Reduce(os.getcwd, ())}, blob)
    config = {"class_name": "Functional", "config": {"layers": [{
        "class_name": "TorchModuleWrapper", "module": "keras.layers",
        "config": {"module": base64.b64encode(blob.getvalue()).decode("ascii")}}]}}
    return _zip({"config.json": json.dumps(config).encode(), "metadata.json": b"{}"})


def _torchscript_from_file(path: Path) -> None:
    import torch

    code = ("import torch\n"
            "class M(torch.nn.Module):\n"
            "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n"
            "        return x + torch.from_file('/etc/hostname', False, 1, "
            "dtype=torch.uint8).sum()\n")
    namespace: dict[str, object] = {}
    src = path.with_suffix(".py")
    src.write_text(code)
    exec(compile(code, str(src), "exec"), namespace)  # our own module source, to script it
    import linecache

    linecache.updatecache(str(src))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated, not gone
        torch.jit.save(torch.jit.script(namespace["M"]()), str(path))  # type: ignore[operator]
    src.unlink()


def _loader_agreement_cases(root: Path) -> list[Sample]:
    import joblib

    out: list[Sample] = []

    def put(name: str, data: bytes, container: str) -> None:
        (root / name).write_bytes(data)
        out.append(Sample(root / name, True, "getcwd", container))

    for tag, prefix in (("int_leading_zeros", b"I007\n0"), ("int_nul", b"I12\x00junk\n0"),
                        ("long_nul", b"L12\x00z\n0"), ("float_nul", b"F1.5\x00x\n0"),
                        ("int_underscore", b"I1_0\n0"), ("empty_set_first", b"\x8f0"),
                        ("binbytes8_first", b"\x8e" + struct.pack("<Q", 3) + b"abc0"),
                        ("memo_key_space", b"Np 7\n0")):
        put(f"{tag}__pickle_operand.bin", prefix + _CALL, "pickle_operand")
    for tag, descr in (("O8", "'O8'"), ("object", "'object'"), ("eqO", "'=O'"),
                       ("struct", "[('a', '<f4'), ('b', [('c', 'object')])]")):
        put(f"npy_{tag}__npy_dtype.npy", _npy_header(descr, P2 + _CALL), "npy_dtype_spelling")
    put("npz_folder_member__npz_dir.npz",
        _zip({"w.npy": _npy_header("'<f8'", bytes(8)), "evil/": _npy_header("'|O'", P2 + _CALL)}),
        "npz_dir_member")
    put("size_lie__zip_sizes.zip", _size_lie(P2 + _CALL), "zip_size_lie")
    put("dup_central__zip_dup.zip", _dup_central(P2 + _CALL), "zip_duplicate_central")
    put("junk_prefix__zip_junk.keras",
        b"#!/bin/sh\nnot a pickle\n" * 3 + _zip({"m.pkl": P2 + _CALL}), "zip_junk_prefix")
    put("encrypted__zip_encrypted.zip", _encrypted(P2 + _CALL), "zip_encrypted")
    put("st_pickle__polyglot_safetensors.safetensors", _st_pickle_polyglot(),
        "polyglot_safetensors_pickle")
    put("tar_pickle__polyglot_tar.tar", _tar_pickle_polyglot(), "polyglot_tar_pickle")
    put("plain_array__joblib_plain.joblib", _joblib_plain_array(), "joblib_plain_reading")
    raw = pickle.dumps({"p": _Reduce(os.getcwd, ())}, protocol=2)
    put("zf_format__joblib_zf.pkl", b"ZF" + hex(len(raw)).encode().ljust(19) + zlib.compress(raw),
        "joblib_zf")
    put("lz4__joblib_lz4.joblib", b"\x04\x22\x4d\x18" + bytes(64), "joblib_lz4")
    for dtype in ("U7", "V6", "datetime64[ns]"):
        path = root / f"dtype_{dtype[:2]}__joblib_dtype.joblib"
        joblib.dump({"a": np.zeros((3, 2), dtype=dtype), "p": _Reduce(os.getcwd, ())}, path,
                    protocol=0)
        out.append(Sample(path, True, "getcwd", "joblib_dtype_proto0"))
    lam = _keras_config(True)
    put("no_metadata__keras_nometa.keras",
        _zip({"config.json": json.dumps(lam).encode(), "model.weights.h5": b""}),
        "keras_no_metadata")
    put("torch_wrapper__keras_torch.keras", _keras_torch_wrapper(), "keras_torch_wrapper")
    ts = root / "from_file__torchscript_fileop.pt"
    _torchscript_from_file(ts)
    out.append(Sample(ts, True, "from_file", "torchscript_file_op"))
    return out


# ---- benign files ------------------------------------------------------------------------------


def _benign(root: Path) -> list[Sample]:
    import joblib
    import torch
    from safetensors.numpy import save_file as save_np
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    out: list[Sample] = []

    def mark(path: Path, kind: str) -> None:
        out.append(Sample(path, False, "benign", kind))

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 6 * 6, 10), torch.nn.BatchNorm1d(10))
    torch.save(net.state_dict(), root / "torch_state_dict.pt")
    mark(root / "torch_state_dict.pt", "torch_zip")
    torch.save(net, root / "torch_whole_module.pt")
    mark(root / "torch_whole_module.pt", "torch_zip")
    torch.save(net.state_dict(), root / "torch_legacy.pth", _use_new_zipfile_serialization=False)
    mark(root / "torch_legacy.pth", "torch_legacy")
    torch.save({"epoch": 3, "model": net.state_dict(), "lr": 1e-3, "tags": {"a", "b"}},
               root / "torch_checkpoint.bin")
    mark(root / "torch_checkpoint.bin", "torch_zip")
    torch.jit.script(net.eval()).save(str(root / "torchscript.pt"))
    mark(root / "torchscript.pt", "torchscript")
    encoder = torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 1)
    torch.save(encoder, root / "torch_transformer_whole.pt")
    mark(root / "torch_transformer_whole.pt", "torch_zip")
    torch.save(encoder, root / "torch_transformer_legacy.pth",
               _use_new_zipfile_serialization=False)
    mark(root / "torch_transformer_legacy.pth", "torch_legacy")
    torch.save({"size": torch.Size([2, 3]), "device": torch.device("cpu"), "dtype": torch.half,
                "bf16": torch.ones(2, dtype=torch.bfloat16), "sparse": torch.eye(2).to_sparse(),
                "q": torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.qint8),
                "numpy": np.ones(3), "scalar": np.float32(2), "rng": torch.get_rng_state()},
               root / "torch_misc.pt")
    mark(root / "torch_misc.pt", "torch_zip")

    x, y = load_iris(return_X_y=True)
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.model_selection import GridSearchCV
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

    texts = ["good model", "bad model", "good data", "bad data"] * 3
    tabular = np.array([[0.0, 1.0], [1.0, 2.0], [0.0, 3.0]] * 4)
    models = {
        "sklearn_text": Pipeline([("tfidf", TfidfVectorizer()),
                                  ("m", LogisticRegression())]).fit(texts, [1, 0, 1, 0] * 3),
        "sklearn_columns": Pipeline([
            ("cols", ColumnTransformer([("cat", OneHotEncoder(), [0]),
                                        ("num", FunctionTransformer(np.log1p), [1])])),
            ("m", LogisticRegression())]).fit(tabular, [0, 1, 0] * 4),
        "sklearn_logreg": LogisticRegression(max_iter=200).fit(x, y),
        "sklearn_grid": GridSearchCV(LogisticRegression(max_iter=100), {"C": [0.5, 1.0]},
                                     cv=2).fit(x, y),
        "sklearn_forest": RandomForestClassifier(n_estimators=5, random_state=0).fit(x, y),
        "sklearn_pipeline": Pipeline([("s", StandardScaler()),
                                      ("m", LogisticRegression(max_iter=200))]).fit(x, y),
    }
    for name, model in models.items():
        joblib.dump(model, root / f"{name}.joblib")
        mark(root / f"{name}.joblib", "joblib")
    joblib.dump(models["sklearn_forest"], root / "sklearn_forest_z.joblib", compress=3)
    mark(root / "sklearn_forest_z.joblib", "joblib_zlib")
    with open(root / "sklearn_forest.pkl", "wb") as f:
        pickle.dump(models["sklearn_forest"], f, protocol=5)
    mark(root / "sklearn_forest.pkl", "raw")

    arrays = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.zeros(4)}
    np.save(root / "array.npy", arrays["w"])
    mark(root / "array.npy", "npy")
    np.savez_compressed(root / "arrays.npz", **arrays)
    mark(root / "arrays.npz", "npz")
    for proto in (2, 4, 5):
        with open(root / f"numpy_proto{proto}.pkl", "wb") as f:
            pickle.dump({"w": arrays["w"], "s": np.float64(1.5), "dt": np.dtype("U4")}, f,
                        protocol=proto)
        mark(root / f"numpy_proto{proto}.pkl", "raw")
    save_np(arrays, str(root / "weights.safetensors"))
    mark(root / "weights.safetensors", "safetensors")
    (root / "model.onnx").write_bytes(_onnx_bytes())
    mark(root / "model.onnx", "onnx")
    (root / "weights.bin").write_bytes(b"\x00" * 48)
    (root / "model_external.onnx").write_bytes(_onnx_bytes(location="weights.bin"))
    mark(root / "model_external.onnx", "onnx")
    (root / "keras_dense.keras").write_bytes(_keras_file(False))
    mark(root / "keras_dense.keras", "keras")
    _h5_file(root / "keras_dense.h5", False)
    mark(root / "keras_dense.h5", "keras_h5")
    (root / "bundle.tar.gz").write_bytes(_tar({
        "model/state.pt": (root / "torch_state_dict.pt").read_bytes(),
        "model/forest.joblib": (root / "sklearn_forest.joblib").read_bytes(),
    }, "w:gz"))
    mark(root / "bundle.tar.gz", "tar_gz")
    _benign_real(root, mark)
    (root / "bundle.7z").write_bytes(_7z({"w.safetensors":
                                          (root / "weights.safetensors").read_bytes()}))
    mark(root / "bundle.7z", "7z")
    return out


def _benign_real(root: Path, mark: Callable[[Path, str], None]) -> None:
    """pandas pickles, a Lightning-style checkpoint, quantized tensors and weight-normed
    whole models (issue 17's false positives)."""
    import argparse
    import pathlib

    import torch

    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is in the bench venv
        pd = None
    if pd is not None:
        frame = pd.DataFrame({"a": [1, 2], "b": [0.5, 1.5], "c": ["x", "y"],
                              "d": pd.date_range("2020-01-01", periods=2)})
        for proto in (2, 5):
            frame.to_pickle(root / f"pandas_frame{proto}.pkl", protocol=proto)
            mark(root / f"pandas_frame{proto}.pkl", "pandas")
        pd.Series([1.0, 2.0], name="s").to_pickle(root / "pandas_series.pkl")
        mark(root / "pandas_series.pkl", "pandas")
    hp = argparse.Namespace(lr=0.1, data_dir=pathlib.Path("/data"), log=pathlib.PurePosixPath("l"))
    torch.save({"epoch": 1, "state_dict": {"w": torch.ones(2)}, "hyper_parameters": hp},
               root / "lightning.ckpt")
    mark(root / "lightning.ckpt", "lightning")
    q = {"t": torch.quantize_per_tensor(torch.rand(4), 0.1, 10, torch.quint8),
         "c": torch.quantize_per_channel(torch.rand(2, 3), torch.tensor([0.1, 0.2]),
                                         torch.tensor([0, 1]), 0, torch.qint8)}
    torch.save(q, root / "quantized.pt")
    mark(root / "quantized.pt", "quantized")
    torch.save(q, root / "quantized_legacy.pt", _use_new_zipfile_serialization=False)
    mark(root / "quantized_legacy.pt", "quantized")
    normed = torch.nn.Sequential(torch.nn.utils.weight_norm(torch.nn.Linear(3, 4)),
                                 torch.nn.utils.spectral_norm(torch.nn.Linear(4, 2)))
    torch.save(normed, root / "weight_norm_whole.pt")
    mark(root / "weight_norm_whole.pt", "weight_norm")


def build_corpus(root: str | os.PathLike[str], *, benign: bool = True,
                 containers: tuple[str, ...] | None = None,
                 payloads: tuple[str, ...] | None = None) -> list[Sample]:
    """Write the corpus under ``root`` (``malicious/`` and ``benign/``) and describe it."""
    root = Path(root)
    bad = root / "malicious"
    bad.mkdir(parents=True, exist_ok=True)
    samples: list[Sample] = []
    for cname, (ext, wrap) in CONTAINERS.items():
        if containers is not None and cname not in containers:
            continue
        for pname, payload in PAYLOADS.items():
            if payloads is not None and pname not in payloads:
                continue
            path = bad / f"{pname}__{cname}{ext}"
            path.write_bytes(wrap(payload))
            samples.append(Sample(path, True, pname, cname))
    if containers is None and payloads is None:
        samples.extend(_format_cases(bad))
    if benign:
        good = root / "benign"
        good.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # torch.jit.script and sklearn deprecations are not what the corpus is about
            warnings.simplefilter("ignore")
            samples.extend(_benign(good))
    return samples
