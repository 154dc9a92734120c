"""Formats and containers: lenient zip reading, limits, safetensors, ONNX, Keras, TorchScript."""

from __future__ import annotations

import gzip
import io
import json
import struct
import zipfile
from pathlib import Path
from typing import IO

import numpy as np
import pytest
import torch

from bastion.artifacts.scan import Severity, Verdict, scan_path
from bastion.artifacts.scan._scanner import _Context, scan_stream
from bastion.artifacts.scan._stream import Budget
from bastion.errors import ConfigurationError, InputError

PAYLOAD = b"\x80\x02cos\ngetcwd\n)R."


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_zip_entry_missing_from_central_directory_is_still_scanned(tmp_path: Path) -> None:
    data = bytearray(_zip({"a.txt": b"hello", "hidden.bin": PAYLOAD}))
    # drop the central directory record of hidden.bin and fix the end record
    cd = data.find(b"PK\x01\x02", data.find(b"PK\x01\x02") + 4)
    eocd = data.find(b"PK\x05\x06")
    removed = eocd - cd
    del data[cd:eocd]
    eocd -= removed
    struct.pack_into("<HHI", data, eocd + 8, 1, 1, struct.unpack_from("<I", data, eocd + 12)[0]
                     - removed)
    path = tmp_path / "hidden.zip"
    path.write_bytes(bytes(data))
    assert zipfile.ZipFile(path).namelist() == ["a.txt"]
    result = scan_path(path)
    assert result.verdict is Verdict.UNSAFE
    assert [f.name for _, f in result.all_findings()] == ["getcwd"]


def test_deflated_and_nested_zips_respect_max_depth(tmp_path: Path) -> None:
    data = PAYLOAD
    for level in range(4):
        data = _zip({f"level{level}.zip" if level else "p.pkl": data}, zipfile.ZIP_DEFLATED)
    path = tmp_path / "deep.zip"
    path.write_bytes(data)
    assert scan_path(path).verdict is Verdict.UNSAFE
    shallow = scan_path(path, max_depth=2)
    assert shallow.verdict is Verdict.ERROR
    assert "max_depth" in json.dumps(shallow.to_dict())


def test_decompression_beyond_max_bytes_is_an_error_not_clean(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "big.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(b"\x00" * 3_000_000)))
    assert scan_path(path).verdict is Verdict.CLEAN
    limited = scan_path(path, max_bytes=1_000_000)
    assert limited.verdict is Verdict.ERROR and "max_bytes" in (limited.error or "")


class _Counting(io.RawIOBase):
    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.f.read(len(b))
        b[: len(data)] = data
        self.read_bytes += len(data)
        return len(data)


def test_torch_checkpoint_scan_never_reads_tensor_bytes(tmp_path: Path) -> None:
    path = tmp_path / "big.pt"
    torch.save({"w": torch.zeros(2_000_000), "b": torch.ones(10)}, path)
    size = path.stat().st_size
    with open(path, "rb") as raw:
        counting = _Counting(raw)
        result = scan_stream(io.BufferedReader(counting, buffer_size=4096), str(path),
                             _Context(5, Budget(1 << 30)), 0)
    assert result.verdict is Verdict.CLEAN and result.format == "pytorch"
    assert size > 8_000_000 and counting.read_bytes < 100_000


def _safetensors(header: dict[str, object], buffer: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + buffer


def test_safetensors_header_validation(tmp_path: Path) -> None:
    t = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    cases = {
        "ok": (_safetensors({"__metadata__": {"k": "v"}, "a": t}, b"\x00" * 8), None),
        "gap": (_safetensors({"a": {**t, "data_offsets": [4, 12]}}, b"\x00" * 12), "unaccounted"),
        "dtype": (_safetensors({"a": {**t, "dtype": "F33"}}, b"\x00" * 8), "unknown dtype"),
        "trailing": (_safetensors({"a": t}, b"\x00" * 16), "no tensor accounts"),
        "metadata": (_safetensors({"__metadata__": {"k": 1}, "a": t}, b"\x00" * 8), "strings"),
    }
    for name, (data, expected) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(data)
        result = scan_path(path)
        if expected is None:
            assert result.verdict is Verdict.CLEAN, name
        else:
            assert result.verdict is Verdict.UNSAFE, name
            assert expected in result.findings[0].why, (name, result.findings)
    dup = tmp_path / "dup.safetensors"
    raw = b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "a": ' \
          b'{"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}'
    dup.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\x00" * 8)
    assert "more than once" in scan_path(dup).findings[0].why


def test_onnx_custom_op_inside_a_subgraph_is_found(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    inner = helper.make_graph([helper.make_node("Run", ["x"], ["y"], domain="evil.ops")],
                              "then", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                         [1])])
    cond = helper.make_node("If", ["c"], ["y"], then_branch=inner, else_branch=inner)
    graph = helper.make_graph([cond], "g",
                              [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "sub.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    result = scan_path(path)
    assert result.format == "onnx"
    assert {(f.operator, f.module, f.name) for f in result.findings} == {
        ("onnx-custom-op", "evil.ops", "Run")}


def test_keras_custom_object_is_medium_and_lambda_is_high(tmp_path: Path) -> None:
    config = {"class_name": "Sequential", "module": "keras", "config": {"layers": [
        {"class_name": "MyLayer", "module": "my_project.layers", "config": {}},
        {"class_name": "Wrapper", "module": "keras.layers", "config": {"layer": {
            "class_name": "Lambda", "module": "keras.layers", "config": {}}}},
    ]}}
    path = tmp_path / "m.keras"
    path.write_bytes(_zip({"config.json": json.dumps(config).encode(),
                           "metadata.json": b"{}"}))
    result = scan_path(path)
    assert result.format == "keras"
    found = {(f.name, f.severity) for _, f in result.all_findings()}
    assert found == {("MyLayer", Severity.MEDIUM), ("Lambda", Severity.HIGH)}


def test_torchscript_custom_operator_in_code_is_found(tmp_path: Path) -> None:
    import pickle

    code = b"def forward(self, x):\n    return torch.ops.evil_ns.launch(x)\n"
    path = tmp_path / "ts.pt"
    path.write_bytes(_zip({"m/data.pkl": pickle.dumps({"a": 1}, protocol=2),
                           "m/constants.pkl": pickle.dumps((), protocol=2),
                           "m/code/__torch__.py": code}))
    result = scan_path(path)
    assert result.format == "torchscript"
    assert [(f.module, f.name) for _, f in result.all_findings()] == [("evil_ns", "launch")]


def test_text_empty_and_truncated_files(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("copyright notice\nmore text\n")
    (tmp_path / "empty.bin").write_bytes(b"")
    (tmp_path / "cut.pkl").write_bytes(b"\x80\x04\x95\x10\x00")
    (tmp_path / "cut_h5.npy").write_bytes(b"\x93NUMPY\x01\x00\xff")
    assert scan_path(tmp_path / "README.md").verdict is Verdict.SKIPPED
    assert scan_path(tmp_path / "empty.bin").verdict is Verdict.SKIPPED
    assert scan_path(tmp_path / "cut.pkl").verdict is Verdict.ERROR
    assert scan_path(tmp_path / "cut_h5.npy").verdict is Verdict.ERROR


def test_npy_object_array_and_folder_scan(tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(tmp_path / "num.npy", np.ones(3))
    assert scan_path(tmp_path / "obj.npy").verdict is Verdict.CLEAN
    folder = scan_path(tmp_path)
    assert folder.format == "directory" and len(folder.members) == 2


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        scan_path(tmp_path / "missing.pt")
    with pytest.raises(ConfigurationError, match="max_depth"):
        scan_path(tmp_path, max_depth=-1)


class _Unseekable(io.RawIOBase):
    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.data += b
        return len(b)


def test_zip64_and_data_descriptor_members_are_read(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        with zf.open("archive/data.pkl", "w", force_zip64=True) as member:
            member.write(PAYLOAD)
        zf.writestr("archive/version", "3\n")
    (tmp_path / "z64.pt").write_bytes(buf.getvalue())
    result = scan_path(tmp_path / "z64.pt")
    assert (result.format, result.verdict) == ("pytorch", Verdict.UNSAFE)

    stream = _Unseekable()  # zipfile writes data descriptors (flag bit 3) to such streams
    with zipfile.ZipFile(stream, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.txt", "hello")
        with zf.open("m/x.pkl", "w") as member:
            member.write(PAYLOAD)
    data = bytes(stream.data)
    (tmp_path / "dd.zip").write_bytes(data)
    (tmp_path / "no_central.zip").write_bytes(data[: data.find(b"PK\x01\x02")])
    for name in ("dd.zip", "no_central.zip"):
        result = scan_path(tmp_path / name)
        assert result.verdict is Verdict.UNSAFE, name
        assert [m.path.rsplit("!", 1)[1] for m in result.members] == ["m/x.pkl"]
