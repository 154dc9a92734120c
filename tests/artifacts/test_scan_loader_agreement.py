"""Each kind of format disagreement between the scanner and the real loaders, as a file the
loader really accepts (checked here with the loader's own parser) and the scanner must not
call clean: pickle operands, leading opcodes, numpy headers, npz and zip tricks, polyglots,
joblib arrays and compressions, Keras archives and TorchScript code."""

from __future__ import annotations

import base64
import io
import json
import os
import pickle
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bastion.artifacts.scan import Verdict, scan_path, scan_paths
from bastion.artifacts.scan._allowlist import lookup
from bastion.artifacts.scan._allowlist_frameworks import SKLEARN_CLASSES, TORCH_LAYERS

#: os.getcwd(): harmless, and it shows the loader really ran a call from the file
CALL = b"cos\ngetcwd\n)R."
PAYLOAD = b"\x80\x02" + CALL


class _Call:
    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (os.getcwd, ())


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _names(path: Path) -> list[str]:
    return [f.name for _, f in scan_path(path).all_findings()]


# -- pickle operands and leading opcodes --------------------------------------------------------
@pytest.mark.parametrize("prefix", [
    b"I007\n0",            # INT operands follow C strtol (base 0): 007 is 7
    b"I12\x00junk\n0",     # a NUL ends a numeric operand for the C unpickler
    b"L12\x00z\n0",
    b"F1.5\x00x\n0",
    b"I1_0\n0",
    b"\x8f0",              # EMPTY_SET first
    b"\x8e" + struct.pack("<Q", 3) + b"abc0",  # BINBYTES8 first
    b"Np 7\n0",            # a memo key with a space
])
def test_operands_and_first_opcodes_the_c_unpickler_accepts(tmp_path, prefix) -> None:
    data = prefix + CALL
    assert pickle.loads(data) == os.getcwd()  # the loader runs the call
    path = _write(tmp_path, "model.bin", data)  # no .pkl name: content decides
    result = scan_path(path)
    assert result.verdict is Verdict.UNSAFE, result.to_dict()
    assert "getcwd" in _names(path)


# -- numpy ------------------------------------------------------------------------------------
def _npy(descr: str, payload: bytes) -> bytes:
    header = f"{{'descr': {descr}, 'fortran_order': False, 'shape': (1,), }}"
    header = header + " " * (63 - len(header) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + payload


@pytest.mark.parametrize("descr", ["'|O'", "'O8'", "'object'", "'=O'", "[('a', 'O')]",
                                   "[('a', '<f4'), ('b', [('c', 'object')])]"])
def test_object_dtypes_however_spelled(tmp_path, descr) -> None:
    data = _npy(descr, pickle.dumps(np.array([_Call()], dtype=object)[0:0]) + PAYLOAD)
    # numpy's own header parser sees an object dtype, so np.load(allow_pickle=True) unpickles
    from numpy.lib import format as npformat
    f = io.BytesIO(data)
    npformat.read_magic(f)
    assert npformat.read_array_header_1_0(f)[2].hasobject
    path = _write(tmp_path, "a.npy", _npy(descr, PAYLOAD))
    assert scan_path(path).verdict is Verdict.UNSAFE


def test_npz_member_named_like_a_folder_is_read(tmp_path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("w.npy", _npy("'<f8'", b"\x00" * 8))
        zf.writestr("evil/", _npy("'|O'", PAYLOAD))
    path = _write(tmp_path, "a.npz", buf.getvalue())
    assert zipfile.ZipFile(path).read("evil/").startswith(b"\x93NUMPY")  # zipfile reads it
    assert "evil/" in np.load(path, allow_pickle=False).files
    assert scan_path(path).verdict is Verdict.UNSAFE


# -- zip structure ----------------------------------------------------------------------------
def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytearray:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return bytearray(buf.getvalue())


def test_stored_member_whose_sizes_disagree_is_an_error(tmp_path) -> None:
    data = _zip({"m.pkl": b"\x80\x02N." + b" " * 40 + PAYLOAD})
    cd = data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, cd + 20, 4)  # central directory: 4 stored bytes
    result = scan_path(_write(tmp_path, "m.zip", bytes(data)))
    assert result.verdict in (Verdict.ERROR, Verdict.UNSAFE)
    assert result.verdict is not Verdict.CLEAN


def test_two_central_records_for_one_local_header(tmp_path) -> None:
    torch_zip = io.BytesIO()
    torch.save({"w": torch.ones(2)}, torch_zip)
    data = bytearray(torch_zip.getvalue())
    # add a second central record, named like a tensor storage, for a payload member
    evil = _zip({"archive/evil.pkl": PAYLOAD})
    cd = evil.find(b"PK\x01\x02")
    rec = bytearray(evil[cd:evil.find(b"PK\x05\x06")])
    name_len = struct.unpack_from("<H", rec, 28)[0]
    alias = bytearray(rec)
    alias[46:46 + name_len] = b"archive/data/9" + b"9" * (name_len - 14)
    combined = evil[:cd] + rec + alias
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 2, 2, len(rec) * 2, cd, 0)
    path = _write(tmp_path, "dup.zip", bytes(combined + eocd))
    names = zipfile.ZipFile(path).namelist()
    assert len(names) == 2  # zipfile lists both names for the one member
    result = scan_path(path)
    assert result.verdict is Verdict.UNSAFE
    del data


def test_junk_before_pk_is_read_as_zipfile_reads_it(tmp_path) -> None:
    data = b"#!/bin/sh\nthis is not a pickle\n" * 4 + bytes(_zip({"m.pkl": PAYLOAD}))
    path = _write(tmp_path, "prefixed.keras", data)
    assert zipfile.is_zipfile(path) and zipfile.ZipFile(path).read("m.pkl") == PAYLOAD
    assert scan_path(path).verdict is Verdict.UNSAFE


def test_encrypted_member_is_not_inspected_and_never_clean(tmp_path) -> None:
    data = _zip({"m.pkl": b"\x00" * 32})
    struct.pack_into("<H", data, 6, 1)  # local header: encrypted
    cd = data.find(b"PK\x01\x02")
    struct.pack_into("<H", data, cd + 8, 1)
    result = scan_path(_write(tmp_path, "enc.zip", bytes(data)))
    assert result.verdict is Verdict.ERROR
    assert "encrypted" in json.dumps(result.to_dict())


# -- polyglots --------------------------------------------------------------------------------
def test_safetensors_that_is_also_a_pickle(tmp_path) -> None:
    from safetensors.numpy import load as st_load

    # INT with operand "1\0\0\0\0\0\0{json}\n": the length prefix and the JSON header are one
    # INT operand for the C unpickler; the call sits in a tensor's bytes
    call = b"0" + CALL
    n = ord("I") + 256 * ord("1")
    header = json.dumps({"t": {"dtype": "U8", "shape": [len(call)],
                               "data_offsets": [0, len(call)]}}).encode()
    header = header + b" " * (n - len(header) - 1) + b"\n"
    data = struct.pack("<Q", n) + header + call
    assert data[:2] == b"I1" and st_load(data)["t"].tobytes() == call  # valid safetensors
    assert pickle.loads(data) == os.getcwd()  # and a pickle that runs the call
    path = _write(tmp_path, "model.safetensors", data)
    result = scan_path(path)
    assert result.verdict is Verdict.UNSAFE
    assert "safetensors" in result.format and "pickle" in result.format


def test_tar_that_is_also_a_pickle(tmp_path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        info = tarfile.TarInfo(CALL.decode("latin-1"))
        info.size = 4
        tf.addfile(info, io.BytesIO(b"data"))
    data = buf.getvalue()
    assert pickle.loads(data) == os.getcwd()
    assert tarfile.open(fileobj=io.BytesIO(data)).getnames() == [CALL.decode("latin-1")]
    result = scan_path(_write(tmp_path, "model.tar", data))
    assert result.verdict is Verdict.UNSAFE


# -- joblib -----------------------------------------------------------------------------------
_DTYPES = [np.float64, np.int8, np.bool_, np.float16, np.complex128, "U7", "S5", "V6",
           "datetime64[ns]", np.dtype([("x", "<f4"), ("y", "<i8", (2, 3))]),
           np.dtype([("s", "U3"), ("n", [("a", "u1"), ("b", ">f8")])], align=True)]


@pytest.mark.parametrize("dtype", _DTYPES, ids=str)
@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_joblib_array_lengths_match_joblib(tmp_path, dtype, protocol) -> None:
    arr = np.zeros((3, 2), dtype=dtype)
    path = tmp_path / "m.joblib"
    joblib.dump({"a": arr, "p": _Call()}, path, protocol=protocol)
    assert _names(path) == ["getcwd"]
    clean = tmp_path / "c.joblib"
    joblib.dump({"a": arr, "b": np.arange(7)}, clean, protocol=protocol)
    assert scan_path(clean).verdict is Verdict.CLEAN


def test_joblib_compressions_are_read_or_an_error(tmp_path) -> None:
    for compress in ("zlib", "gzip", "bz2", "lzma", "xz"):
        path = tmp_path / f"m.{compress}.joblib"
        joblib.dump({"p": _Call()}, path, compress=(compress, 3))
        assert scan_path(path).verdict is Verdict.UNSAFE, compress
    # joblib's old zlib format: b"ZF", the length in hex padded to 19 characters, zlib data
    raw = pickle.dumps({"p": _Call()}, protocol=2)
    zf = b"ZF" + hex(len(raw)).encode().ljust(19) + zlib.compress(raw)
    old = _write(tmp_path, "old.pkl", zf)
    with pytest.warns(DeprecationWarning):
        assert joblib.load(old)["p"] == os.getcwd()
    assert scan_path(old).verdict is Verdict.UNSAFE
    # lz4 (joblib's compress="lz4") is read, or reported unread: never skipped
    lz4 = scan_path(_write(tmp_path, "m.lz4", b"\x04\x22\x4d\x18" + bytes(64)))
    assert lz4.verdict in (Verdict.ERROR, Verdict.UNSAFE)


def test_plain_pickle_reading_of_joblib_array_bytes(tmp_path) -> None:
    from joblib.numpy_pickle import NumpyArrayWrapper

    # an array without alignment padding: joblib reads its 15 bytes as data, while
    # pickle.load and torch.load read them as opcodes
    body = b"0" + CALL[:-1]
    wrapper = NumpyArrayWrapper(np.ndarray, (len(body),), "C", np.dtype("u1"))
    wrapper.numpy_array_alignment_bytes = None
    data = pickle.dumps(wrapper, protocol=2)[:-1] + body + b"."
    assert joblib.load(io.BytesIO(data)).tobytes() == body
    assert pickle.loads(data) == os.getcwd()
    path = _write(tmp_path, "m.joblib", data)
    assert "getcwd" in _names(path)
    # the joblib reading alone is clean: the finding comes from the plain reading
    benign = pickle.dumps(wrapper, protocol=2)[:-1] + bytes(len(body)) + b"."
    assert scan_path(_write(tmp_path, "b.joblib", benign)).verdict is Verdict.CLEAN


# -- Keras and TorchScript --------------------------------------------------------------------
def test_keras_archive_without_metadata_json(tmp_path) -> None:
    config = {"class_name": "Sequential", "config": {"layers": [
        {"class_name": "Lambda", "config": {"function": "lambda x: x"}}]}}
    data = _zip({"config.json": json.dumps(config).encode(), "model.weights.h5": b""})
    path = _write(tmp_path, "m.keras", bytes(data))
    assert scan_path(path).verdict is Verdict.UNSAFE


def test_keras_layer_embedding_a_torch_pickle(tmp_path) -> None:
    blob = io.BytesIO()
    torch.save({"m": _Call()}, blob)
    config = {"class_name": "Functional", "config": {"layers": [{
        "class_name": "TorchModuleWrapper", "module": "keras.layers",
        "config": {"module": base64.b64encode(blob.getvalue()).decode("ascii")}}]}}
    data = _zip({"config.json": json.dumps(config).encode(), "metadata.json": b"{}"})
    path = _write(tmp_path, "m.keras", bytes(data))
    assert "getcwd" in _names(path)


class _ReadsAFile(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.from_file("/etc/hostname", False, 1, dtype=torch.uint8)
        return x + y.sum()


def test_torchscript_code_touching_files(tmp_path) -> None:
    path = tmp_path / "ts.pt"
    with pytest.warns(DeprecationWarning):
        torch.jit.save(torch.jit.script(_ReadsAFile()), path)
    result = scan_path(path)
    assert result.verdict is Verdict.UNSAFE
    assert ("aten", "from_file") in {(f.module, f.name) for _, f in result.all_findings()}


# -- exact allowlist --------------------------------------------------------------------------
def test_allowlist_is_exact_names_defined_where_listed() -> None:
    import importlib
    import inspect

    reexports = 0
    for table in (TORCH_LAYERS, SKLEARN_CLASSES):
        for module, names in list(table.items())[:60]:
            mod = importlib.import_module(module)
            for name in names:
                obj = getattr(mod, name)
                assert getattr(obj, "__module__", module) == module, (module, name)
            for name, value in vars(mod).items():
                if inspect.isclass(value) and value.__module__ != module and name[:1].isupper():
                    # a class the module only imports is not allowed under its name
                    if (module, name) not in {(module, n) for n in names}:
                        reexports += 1
                        assert lookup(module, name) is None or lookup(
                            value.__module__, value.__name__) is not None, (module, name)
    assert reexports > 0
    # a network client re-exported through an allowed package does not pass
    assert lookup("sklearn.utils", "HTTPConnection") is None
    assert lookup("torch.nn.modules.module", "OrderedDict") is None
    assert lookup("sklearn.linear_model._logistic", "LogisticRegression") is not None


# -- fail closed and --strict -----------------------------------------------------------------
def test_skipped_only_for_content_no_loader_executes_and_strict(tmp_path) -> None:
    from bastion.cli.main import app

    (tmp_path / "README.md").write_text("# a model\n")
    torch.save({"w": torch.ones(1)}, tmp_path / "w.pt")
    report = scan_paths([tmp_path])
    assert report.counts["skipped"] == 1 and report.exit_code == 0
    assert scan_paths([tmp_path], strict=True).exit_code == 2
    runner = CliRunner()
    out = runner.invoke(app, ["scan", str(tmp_path)])
    assert out.exit_code == 0 and "1 skipped" in out.output
    strict = runner.invoke(app, ["scan", "--strict", str(tmp_path)])
    assert strict.exit_code == 2
