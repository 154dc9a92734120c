"""Format identification by content, and the scanners of formats that are not pickles.

``sniff`` looks at the first bytes only (never at the file name). The scanners here read
headers and metadata and never the tensor bytes: numpy ``.npy`` headers (object arrays are
pickles and are handed back to the pickle scanner), safetensors headers (length, JSON,
dtypes, shapes and offsets), ONNX graphs (external-data paths and operator domains, parsed
with protobuf only), Keras configurations (Lambda and custom layers at any depth), skops
schemas (every type it would construct) and TorchScript code (custom operator namespaces).
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Iterator
from typing import IO, Any

from bastion.artifacts.scan._allowlist import grade, lookup
from bastion.artifacts.scan._opcodes import DISPATCH
from bastion.artifacts.scan._types import Finding, Severity

__all__ = ["keras_embedded", "readings", "sniff"]

HEAD = 4096


def sniff(head: bytes) -> str:
    """The format of a stream from its first bytes.

    >>> sniff(b"\\x80\\x04\\x95")
    'pickle'
    >>> sniff(b"PK\\x03\\x04")
    'zip'
    >>> sniff(b"\\xffjust some text")
    'unknown'
    >>> sniff(b"just some text")  # 'j' is a pickle opcode: a pickle loader would try it
    'pickle?'
    """
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"):
        return "zip"
    if head[:6] == b"7z\xbc\xaf\x27\x1c":
        return "7z"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:3] == b"BZh":
        return "bz2"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if head[:3] == b"\x5d\x00\x00":
        return "lzma"
    if head[:6] == b"\x93NUMPY":
        return "numpy"
    if head[:8] == b"\x89HDF\r\n\x1a\n":
        return "hdf5"
    if len(head) > 262 and head[257:262] == b"ustar":
        return "tar"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if len(head) >= 2 and head[0] == 0x80 and head[1] <= 5:
        return "pickle"
    if len(head) >= 2 and head[0] == 0x78 and (head[0] * 256 + head[1]) % 31 == 0:
        return "zlib"
    if _looks_like_onnx(head):
        return "onnx"
    if head[:4] == b"\x04\x22\x4d\x18":
        return "lz4"
    if head[:2] == b"ZF":
        return "joblib-zfile"
    if head[:1] and head[0] in DISPATCH:
        return "pickle?"
    return "unknown"


def readings(head: bytes) -> list[str]:
    """Every format a common loader would read a stream as, judging by its first bytes.

    ``pickle.load``, torch's legacy loader, ``joblib.load`` and ``np.load(allow_pickle=True)``
    read any stream whose first byte is a pickle opcode, whatever other format it also is
    (a safetensors file whose length prefix starts with 0x80, a tar whose first member name
    is a pickle), so such a stream is read as a pickle as well. Zip archives found by their
    end record and tar archives found by their first header are added by the scanner.

    >>> readings(b"\\x80\\x04\\x95")
    ['pickle']
    >>> readings(b"\\x80" + bytes(7) + b'{"a": 1}')
    ['safetensors', 'pickle?']
    >>> readings(b"PK\\x03\\x04")
    ['zip']
    """
    first = sniff(head)
    out = [] if first == "unknown" else [first]
    # zip and numpy magic numbers start with opcodes (PERSID, STACK_GLOBAL) that fail at once
    if (first not in ("pickle", "pickle?", "zip", "numpy", "joblib-zfile")
            and head[:1] and head[0] in DISPATCH):
        out.append("pickle?")
    return out
_MODEL_TAGS = frozenset({0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72, 0x7A, 0x82})


def _looks_like_onnx(head: bytes) -> bool:
    if len(head) < 3 or head[0] != 0x08:
        return False
    i, value, shift = 1, 0, 0
    while i < len(head) and head[i] & 0x80:
        value |= (head[i] & 0x7F) << shift
        shift += 7
        i += 1
    if i >= len(head) - 1:
        return False
    value |= head[i] << shift
    return 1 <= value <= 64 and head[i + 1] in _MODEL_TAGS


# ---- numpy ----------------------------------------------------------------------------------


_NPY_MAX_HEADER = 1 << 26


def npy_header(f: IO[bytes]) -> tuple[dict[str, Any], bool]:
    """Parse a ``.npy`` header with numpy's own reader; return it and whether the array holds
    Python objects (then its data is a pickle).

    numpy's parser decides, not a re-implementation: any spelling of an object dtype
    (``O``, ``|O8``, ``object``, a structured dtype with an object field at any depth) is what
    ``dtype.hasobject`` says it is. numpy lifts its header size limit when pickles are allowed,
    so a larger header than the scanner reads is an error, never a skip.
    """
    try:
        from numpy.lib import format as npformat
    except ImportError as exc:  # pragma: no cover - numpy is a dependency
        raise ValueError("reading .npy headers needs numpy") from exc
    version = npformat.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = npformat.read_array_header_1_0(f, max_header_size=_NPY_MAX_HEADER)
    elif version == (2, 0):
        shape, fortran, dtype = npformat.read_array_header_2_0(f, max_header_size=_NPY_MAX_HEADER)
    else:
        impl: Any = getattr(npformat, "_read_array_header", None)
        if impl is None:
            from numpy.lib import _format_impl as impl_module

            impl = impl_module._read_array_header  # type: ignore[attr-defined]
        shape, fortran, dtype = impl(f, version, max_header_size=_NPY_MAX_HEADER)
    header = {"descr": dtype.descr, "fortran_order": fortran, "shape": shape}
    return header, bool(dtype.hasobject)


# ---- safetensors ----------------------------------------------------------------------------

_ST_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16,
            "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "F64": 64,
            "I64": 64, "U64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}
ST_MAX_HEADER = 100_000_000


def scan_safetensors(f: IO[bytes], size: int) -> tuple[list[Finding], str | None]:
    """Validate a safetensors header: length, JSON, dtypes, shapes and offsets."""
    findings: list[Finding] = []

    def bad(why: str, sev: Severity = Severity.MEDIUM, name: str = "") -> None:
        findings.append(Finding("safetensors-header", "safetensors", name, 0, sev, why))

    (n,) = struct.unpack("<Q", f.read(8))
    if n > ST_MAX_HEADER:
        bad(f"header length {n} exceeds the {ST_MAX_HEADER}-byte limit (a denial of service)",
            Severity.HIGH)
        return findings, None
    if n + 8 > size:
        bad(f"header length {n} runs past the end of the {size}-byte file", Severity.HIGH)
        return findings, None
    raw = f.read(n)
    try:
        pairs_seen: list[str] = []

        def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            keys = [k for k, _ in pairs]
            pairs_seen.extend(k for k in set(keys) if keys.count(k) > 1)
            return dict(pairs)

        header = json.loads(raw.decode("utf-8"), object_pairs_hook=hook)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return findings, f"safetensors header is not valid JSON: {exc}"
    if not isinstance(header, dict):
        return findings, "safetensors header is not a JSON object"
    for dup in pairs_seen:
        bad(f"key {dup!r} appears more than once in the header", name=dup)
    buffer_len = size - 8 - n
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in info.items()
            ):
                bad("__metadata__ must map strings to strings", name=name)
            continue
        if not isinstance(info, dict):
            bad(f"entry {name!r} is not an object", name=name)
            continue
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in _ST_BITS:
            bad(f"tensor {name!r} has unknown dtype {dtype!r}", name=name)
            continue
        if not isinstance(shape, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
        ):
            bad(f"tensor {name!r} has an invalid shape {shape!r}", name=name)
            continue
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            bad(f"tensor {name!r} has invalid data_offsets {offsets!r}", name=name)
            continue
        begin, end = offsets
        if begin < 0 or end < begin:
            bad(f"tensor {name!r} has data_offsets {offsets} that run backwards", name=name)
            continue
        if end > buffer_len:
            bad(f"tensor {name!r} ends at {end}, past the {buffer_len}-byte buffer",
                Severity.HIGH, name)
            continue
        nbytes = math.ceil(math.prod(shape) * _ST_BITS[dtype] / 8)
        if end - begin != nbytes:
            bad(f"tensor {name!r} spans {end - begin} bytes but its dtype and shape need "
                f"{nbytes}", name=name)
        spans.append((begin, end, name))
    spans.sort()
    cursor = 0
    for begin, end, name in spans:
        if begin < cursor:
            bad(f"tensor {name!r} overlaps the tensor before it (offset {begin} < {cursor})",
                name=name)
        elif begin > cursor:
            bad(f"{begin - cursor} unaccounted bytes before tensor {name!r}", name=name)
        cursor = max(cursor, end)
    if spans and cursor != buffer_len:
        bad(f"the buffer has {buffer_len - cursor} bytes that no tensor accounts for")
    return findings, None


# ---- ONNX -----------------------------------------------------------------------------------

STANDARD_ONNX_DOMAINS = frozenset({
    "", "ai.onnx", "ai.onnx.ml", "ai.onnx.training", "ai.onnx.preview.training",
    "com.microsoft", "com.microsoft.nchwc", "com.microsoft.experimental",
    "com.ms.internal.nhwc",
})


def scan_onnx(data: bytes) -> tuple[list[Finding], str | None]:
    """External-data locations and custom operator domains of an ONNX model."""
    try:
        import onnx
        from google.protobuf.message import DecodeError
    except ImportError:  # pragma: no cover - onnx is a dependency
        return [], "scanning ONNX needs the onnx package"
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        return [], f"not a valid ONNX model: {exc}"
    findings: list[Finding] = []
    local_functions = {(fn.domain, fn.name) for fn in model.functions}
    graphs = [model.graph] + [fn for fn in model.functions]
    for graph in graphs:
        for tensor in _onnx_tensors(graph):
            location = _external_location(tensor)
            if location is not None:
                why = _unsafe_location(location)
                if why:
                    findings.append(Finding(
                        "onnx-external-data", "onnx", tensor.name, 0, Severity.HIGH,
                        f"tensor {tensor.name!r} reads external data from {location!r}: {why}",
                    ))
        for node in _onnx_nodes(graph):
            if node.domain not in STANDARD_ONNX_DOMAINS and (
                node.domain, node.op_type
            ) not in local_functions:
                findings.append(Finding(
                    "onnx-custom-op", node.domain, node.op_type, 0, Severity.MEDIUM,
                    f"operator {node.domain}::{node.op_type} is not a standard ONNX or "
                    "onnxruntime operator; running the model needs a custom-op library",
                ))
    return findings, None


def _onnx_nodes(graph: Any) -> Iterator[Any]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _onnx_nodes(sub)


def _onnx_tensors(graph: Any) -> Iterator[Any]:
    yield from getattr(graph, "initializer", [])
    for sparse in getattr(graph, "sparse_initializer", []):
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _onnx_tensors(sub)


def _external_location(tensor: Any) -> str | None:
    if tensor.data_location != 1:  # TensorProto.EXTERNAL
        return None
    for entry in tensor.external_data:
        if entry.key == "location":
            return str(entry.value)
    return ""


def _unsafe_location(location: str) -> str:
    if not location:
        return "no location given"
    if "\x00" in location:
        return "the path contains a NUL byte"
    norm = location.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm) or norm.startswith("~"):
        return "an absolute path outside the model's folder"
    if ".." in norm.split("/"):
        return "the path climbs out of the model's folder (path traversal)"
    if "://" in norm:
        return "a URL"
    return ""


# ---- Keras ----------------------------------------------------------------------------------

_KERAS_MODULES = ("keras", "tensorflow", "tf_keras", "keras_core", "keras_hub", "keras_nlp",
                  "keras_cv")


def scan_keras_config(config: Any, what: str) -> list[Finding]:
    """Lambda layers, serialized functions and custom objects anywhere in a Keras config."""
    findings: list[Finding] = []
    for obj in _walk_json(config):
        cls = obj.get("class_name")
        if not isinstance(cls, str):
            continue
        module = obj.get("module")
        registered = obj.get("registered_name")
        if cls == "Lambda":
            findings.append(Finding(
                "keras-layer", str(module or "keras.layers"), "Lambda", 0, Severity.HIGH,
                f"a Lambda layer in {what} carries Python code that runs when the model is "
                "loaded with safe_mode=False",
            ))
        elif cls in ("__lambda__", "function", "__function__"):
            findings.append(Finding(
                "keras-function", str(module or ""), cls, 0, Severity.HIGH,
                f"{what} serializes a Python function ({cls}) that is rebuilt on load",
            ))
        elif isinstance(module, str) and module and not module.startswith(_KERAS_MODULES):
            findings.append(Finding(
                "keras-custom-object", module, cls, 0, Severity.MEDIUM,
                f"{what} names a custom class {module}.{cls}: loading imports that module",
            ))
        elif (isinstance(registered, str) and ">" in registered) or ">" in cls:
            findings.append(Finding(
                "keras-custom-object", str(module or ""), str(registered or cls), 0,
                Severity.MEDIUM,
                f"{what} names a registered custom object {registered or cls}",
            ))
    return findings


_B64 = re.compile(r"[A-Za-z0-9+/\r\n]{64,}={0,2}")


def keras_embedded(config: Any) -> list[tuple[str, bytes]]:
    """Byte strings a Keras config carries that a loader would deserialize: ``__bytes__``
    values and base64 strings (``TorchModuleWrapper`` stores ``torch.save(module)`` so,
    and ``from_config`` runs ``torch.load`` on it) that decode to a model file or pickle."""
    import base64
    import binascii

    out: list[tuple[str, bytes]] = []
    for obj in _walk_json(config):
        where = str(obj.get("class_name") or obj.get("name") or "config")
        if obj.get("class_name") == "__bytes__" and isinstance(obj.get("config"), dict):
            value = obj["config"].get("value")
            if isinstance(value, str):
                out.append((f"{where}.value", value.encode("utf-8", "surrogateescape")))
            continue
        for key, value in obj.items():
            if not isinstance(value, str) or not _B64.fullmatch(value):
                continue
            try:
                blob = base64.b64decode(value, validate=False)
            except (binascii.Error, ValueError):
                continue
            if readings(blob[:HEAD]):
                out.append((f"{where}.{key}", blob))
    return out


def _walk_json(value: Any) -> Iterator[dict[str, Any]]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def scan_hdf5(f: IO[bytes]) -> tuple[str, list[Finding], str | None]:
    """Keras configurations stored as attributes of an HDF5 file."""
    try:
        import h5py
    except ImportError:
        return "hdf5", [], "scanning HDF5 files needs h5py: pip install h5py"
    try:
        with h5py.File(f, "r") as h5:
            attrs = {k: h5.attrs[k] for k in h5.attrs}
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        return "hdf5", [], f"cannot read HDF5: {exc}"
    findings: list[Finding] = []
    fmt = "hdf5"
    for key in ("model_config", "training_config"):
        if key not in attrs:
            continue
        fmt = "keras-h5"
        raw = attrs[key]
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        try:
            findings.extend(scan_keras_config(json.loads(text), f"attribute {key}"))
        except json.JSONDecodeError as exc:
            return fmt, findings, f"attribute {key} is not JSON: {exc}"
    return fmt, findings, None


# ---- skops ----------------------------------------------------------------------------------


def scan_skops_schema(schema: Any) -> list[Finding]:
    """Every type and function a skops file would construct, judged by the allowlist."""
    findings: list[Finding] = []
    seen: set[tuple[str, str]] = set()
    for obj in _walk_json(schema):
        refs = []
        if isinstance(obj.get("__module__"), str) and isinstance(obj.get("__class__"), str):
            refs.append((obj["__module__"], obj["__class__"]))
        content = obj.get("content")
        if obj.get("__loader__") in ("FunctionNode", "TypeNode") and isinstance(content, dict):
            mod = content.get("module_path") or content.get("__module__")
            name = content.get("function") or content.get("__class__")
            if isinstance(mod, str) and isinstance(name, str):
                refs.append((mod, name))
        for module, name in refs:
            if (module, name) in seen or skops_type_allowed(module, name):
                continue
            seen.add((module, name))
            findings.append(Finding(
                "skops-type", module, name, 0, grade(module, name),
                f"the skops schema constructs {module}.{name}, which is not allowlisted",
            ))
    return findings


def skops_type_allowed(module: str, name: str) -> bool:
    """Whether a type named in a skops file is allowlisted."""
    if lookup(module, name) is not None:
        return True
    if module == "builtins" and name in _SKOPS_BUILTINS:
        return True
    return module.startswith("numpy") and name in _SKOPS_NUMPY


_SKOPS_BUILTINS = frozenset({"NoneType", "type"})
_SKOPS_NUMPY = frozenset({"ndarray", "dtype", "float64", "float32", "int64", "int32", "bool_",
                          "str_", "uint8", "int8", "int16", "uint16", "uint32", "uint64",
                          "float16", "complex64", "complex128", "Float64DType", "Int64DType"})

# ---- TorchScript code -----------------------------------------------------------------------

_OPS = re.compile(r"\bops\.([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)")
_STANDARD_OPS = frozenset({"aten", "prim", "quantized", "_quantized", "prepacked", "profiler",
                           "_caffe2", "mkldnn", "mkl", "fbgemm", "quantized_decomposed",
                           "_c10d_functional", "c10d_functional", "_c10d", "torchvision",
                           "image", "torchaudio", "onednn", "xnnpack", "vulkan", "sparse",
                           "inductor", "cuda", "_nested", "higher_order", "_dtensor"})


#: standard operators that read or write files (``aten::from_file``, ``aten::save``), however
#: the code spells them (``torch.from_file(...)``, ``ops.aten.save(...)``, a storage's
#: ``from_file``); ``__setstate__`` and ``forward`` run them on load or on first call
_FILE_OPS = re.compile(r"(?:\btorch\.|\bops\.aten\.|\.)(from_file|save|load)\s*\(")


def scan_torchscript_code(text: str, member: str) -> list[Finding]:
    """Calls of operators outside the standard TorchScript namespaces, and of the standard
    operators that touch files."""
    findings: list[Finding] = []
    seen: set[tuple[str, str]] = set()
    for match in _FILE_OPS.finditer(text):
        op = match.group(1)
        if ("aten", op) in seen:
            continue
        seen.add(("aten", op))
        findings.append(Finding(
            "torchscript-op", "aten", op, match.start(), Severity.HIGH,
            f"{member} calls aten::{op}, which reads or writes a file named by the archive's "
            "code when the module is loaded or run",
        ))
    for match in _OPS.finditer(text):
        ns, op = match.group(1), match.group(2)
        if ns in _STANDARD_OPS or (ns, op) in seen:
            continue
        seen.add((ns, op))
        findings.append(Finding(
            "torchscript-op", ns, op, match.start(), Severity.MEDIUM,
            f"{member} calls the custom operator {ns}::{op}, which runs native code from a "
            "library loaded outside the archive",
        ))
    return findings
