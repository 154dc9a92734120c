"""The pickle-machine simulator: name resolution, calls, joblib arrays, fail-closed parsing."""

from __future__ import annotations

import io
import os
import pickle
import struct

import joblib
import numpy as np
import pytest

from bastion.artifacts.scan import Severity, Verdict, scan_path
from bastion.artifacts.scan._allowlist import grade, lookup
from bastion.artifacts.scan._pickle import scan_pickles
from bastion.artifacts.scan._stream import Reader


class _Call:
    """Pickles as ``os.getcwd()``: harmless even if loaded."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return os.getcwd, ()


def _scan(data: bytes):  # type: ignore[no-untyped-def]
    return scan_pickles(Reader(io.BytesIO(data)))


def _targets(data: bytes) -> set[str]:
    return {f"{f.module}.{f.name}" for f in _scan(data).findings}


@pytest.mark.parametrize("proto", range(6))
def test_clean_containers_of_every_protocol_have_no_findings(proto: int) -> None:
    value = {"l": [1, 2.5, "x", b"yy", None, True], "s": {1, 2}, "f": frozenset([3]),
             "t": (1, (2, 3)), "big": 2**100, "c": complex(1, 2), "ba": bytearray(b"z")}
    result = _scan(pickle.dumps(value, protocol=proto))
    assert result.findings == [] and result.error is None and result.pickles == 1


@pytest.mark.parametrize("proto", range(6))
def test_reduce_payload_is_found_in_every_protocol(proto: int) -> None:
    result = _scan(pickle.dumps([1, _Call()], protocol=proto))
    assert {(f.module, f.name) for f in result.findings} == {("posix", "getcwd")}
    assert result.findings[0].severity is Severity.CRITICAL


def test_stack_global_operands_that_are_not_strings_fail_closed() -> None:
    result = _scan(b"\x80\x04K\x01K\x02\x93)R.")
    ops = [f.operator for f in result.findings]
    assert "STACK_GLOBAL" in ops
    assert all(f.severity >= Severity.HIGH for f in result.findings)


def test_memo_indirection_resolves_the_global() -> None:
    data = (b"\x80\x04\x8c\x02os\x94\x8c\x06getcwd\x94" + b"0" * 2
            + b"]" + b"\x8c\x01a\x94" + b"0" + b"h\x00h\x01\x93)Ra.")
    assert _targets(data) == {"os.getcwd"}


def test_payload_before_a_corrupt_tail_is_still_found() -> None:
    data = b"\x80\x02cos\ngetcwd\n)R" + b"\xff" * 8
    result = _scan(data)
    assert result.error is not None and "0xff" in result.error
    assert [f.name for f in result.findings] == ["getcwd"]


def test_second_concatenated_pickle_is_scanned() -> None:
    data = pickle.dumps({"ok": 1}) + b"\x80\x02cbuiltins\neval\n(S'1'\ntR."
    result = _scan(data)
    assert result.pickles == 2 and _targets(data) == {"builtins.eval"}


def test_protocol_0_names_are_mapped_like_fix_imports() -> None:
    assert _targets(b"c__builtin__\neval\n(S'1'\ntR.") == {"builtins.eval"}
    assert _scan(b"c__builtin__\nset\n(]tR.").findings == []


def test_build_on_a_module_level_object_and_dunder_state_are_findings() -> None:
    on_global = _scan(b"\x80\x02ccollections\nOrderedDict\n}S'x'\nK\x01sb.").findings
    assert any(f.operator == "BUILD" and f.severity is Severity.HIGH for f in on_global)
    trick = (b"\x80\x02ccollections\nOrderedDict\n)R}S'__setstate__'\nS'x'\nsbNb.")
    found = _scan(trick).findings
    assert [f.name for f in found] == ["__setstate__"]


def test_codecs_encode_with_another_codec_is_a_finding() -> None:
    ok = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x06\x00\x00\x00latin1\x86R."
    bad = ok.replace(b"X\x06\x00\x00\x00latin1", b"X\x05\x00\x00\x00rot13")
    assert _scan(ok).findings == []
    assert [f.name for f in _scan(bad).findings] == ["encode"]


def test_calling_a_computed_callable_is_a_finding() -> None:
    # builtins.dict is allowlisted, but calling the dict it returns is not a global call
    result = _scan(b"\x80\x02cbuiltins\ndict\n)R)R.")
    assert [(f.operator, f.severity) for f in result.findings] == [("REDUCE", Severity.HIGH)]


def test_unsupported_protocol_is_an_error() -> None:
    result = _scan(b"\x80\x09N.")
    assert result.error is not None and "protocol 9" in result.error


def test_joblib_arrays_are_skipped_and_what_follows_is_scanned(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "m.joblib"
    joblib.dump({"a": np.arange(5000, dtype=np.float64), "u": np.array(["ab", "c"]),
                 "rec": np.zeros(3, dtype=[("x", "<f4"), ("y", "<i8")]),
                 "p": _Call()}, path)
    result = scan_path(path)
    assert result.format == "joblib"
    assert [f.name for f in result.findings] == ["getcwd"]
    clean = tmp_path / "c.joblib"
    joblib.dump({"a": np.arange(5000, dtype=np.float64), "b": np.ones((3, 2), np.int8)}, clean)
    assert scan_path(clean).verdict is Verdict.CLEAN


def test_joblib_object_arrays_are_scanned_as_nested_pickles(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "o.joblib"
    joblib.dump({"obj": np.array([_Call(), 1], dtype=object), "after": [1, 2]}, path)
    assert [f.name for f in scan_path(path).findings] == ["getcwd"]


def test_allowlist_entries_have_reasons_and_denylist_only_grades() -> None:
    entry = lookup("torch._utils", "_rebuild_tensor_v2")
    assert entry is not None and entry.framework == "torch" and "tensor" in entry.reason
    assert lookup("torch.nn.modules.linear", "Linear") is not None
    assert lookup("torch.nn.modules.module", "register_module_forward_hook") is None
    assert lookup("sklearn.utils._testing", "TempMemmap") is None
    assert lookup("__torch__.Net", "Net") is None
    assert lookup("__torch__.Net", "Net", torchscript=True) is not None
    assert grade("subprocess", "Popen") is Severity.CRITICAL
    assert grade("builtins", "eval") is Severity.CRITICAL
    assert grade("somepkg", "Thing") is Severity.HIGH


def test_legacy_torch_magic_limits_parsing_to_five_pickles() -> None:
    head = b"".join(pickle.dumps(v, protocol=2) for v in
                    (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}, {"w": 1}, []))
    result = _scan(head + struct.pack("<q", 4) + b"\xff" * 16)
    assert result.pickles == 5 and result.error is None
