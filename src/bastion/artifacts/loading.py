"""Safe loading: scan a model file first, then load it with the safest loader for its format.

:func:`load` refuses anything that does not scan clean (an unsafe finding, a scan error, or
an unknown format). Files that hold pickles are read into memory once and both scanned and
loaded from those same bytes, so the file cannot change between the check and the load.
PyTorch files are then loaded with ``weights_only=True`` (torch's own restricted unpickler),
numpy files with ``allow_pickle=False``, safetensors with ``safetensors.torch``, skops files
with exactly the types the scan allowlisted, joblib/pickle files with joblib only when clean.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

from bastion.artifacts.scan import FileScan, Verdict, scan_path
from bastion.artifacts.scan._scanner import DEFAULT_MAX_BYTES, DEFAULT_MAX_DEPTH
from bastion.errors import InputError, ModelLoadError, UnsafeArtifactError

__all__ = ["load"]

log = logging.getLogger(__name__)

_IN_MEMORY = {"pickle", "joblib", "pytorch", "pytorch-legacy", "zlib", "gzip", "bz2", "xz",
              "skops"}
_MAX_LISTED = 5


def load(
    path: str | os.PathLike[str],
    *,
    map_location: str = "cpu",
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Any:
    """Load a model file only if it scans clean.

    Returns what the format's own loader returns: a torch object (state_dict, tensors) for
    PyTorch files, an ndarray or ``NpzFile`` for numpy, a ``dict[str, Tensor]`` for
    safetensors, the estimator for joblib/pickle/skops, an ``onnx.ModelProto`` for ONNX.

    Raises :class:`~bastion.errors.UnsafeArtifactError` listing the findings when the scan
    finds anything (or cannot finish), :class:`~bastion.errors.ModelLoadError` for formats
    with no safe loader (TorchScript, Keras, archives).

    >>> import tempfile, os, torch
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = os.path.join(d, "w.pt")
    ...     torch.save({"w": torch.ones(2)}, p)
    ...     load(p)["w"].tolist()
    [1.0, 1.0]
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"no such model file: {p}")
    size = p.stat().st_size
    data: bytes | None = None
    if size <= max_bytes and _sniff_needs_memory(p):
        data = p.read_bytes()
        scan = _scan_bytes(data, p, max_bytes)
    else:
        scan = scan_path(p, max_bytes=max_bytes)
    _require_clean(scan)
    return _load_clean(p, scan.format, data, map_location)


def _sniff_needs_memory(p: Path) -> bool:
    from bastion.artifacts.scan._formats import sniff

    with open(p, "rb") as f:
        head = f.read(4096)
    fmt = sniff(head)
    # pickles are scanned and loaded from the same bytes; torch zips are loaded with
    # weights_only=True and skops with allowlisted types only, so they load from the path
    return fmt in ("pickle", "pickle?", "zlib", "gzip", "bz2", "xz")


def _scan_bytes(data: bytes, p: Path, max_bytes: int) -> FileScan:
    from bastion.artifacts.scan._scanner import _Context, scan_stream
    from bastion.artifacts.scan._stream import Budget

    ctx = _Context(DEFAULT_MAX_DEPTH, Budget(max_bytes))
    return scan_stream(io.BytesIO(data), str(p), ctx, 0, (p.name,))


def _require_clean(scan: FileScan) -> None:
    if scan.verdict is Verdict.CLEAN:
        return
    if scan.verdict is Verdict.UNSAFE:
        found = scan.all_findings()
        listed = "; ".join(
            f"{f.operator} {f.target} ({f.severity.label}) at {where}:{f.position}"
            for where, f in found[:_MAX_LISTED]
        )
        more = f" and {len(found) - _MAX_LISTED} more" if len(found) > _MAX_LISTED else ""
        raise UnsafeArtifactError(
            f"refusing to load {scan.path}: {len(found)} finding(s): {listed}{more}. "
            "Run `bastion scan` on it for details; only load it if you trust its source."
        )
    if scan.verdict is Verdict.ERROR:
        raise UnsafeArtifactError(
            f"refusing to load {scan.path}: it could not be scanned completely ({scan.error}); "
            "a file that cannot be scanned is never treated as safe"
        )
    raise UnsafeArtifactError(
        f"refusing to load {scan.path}: its format is not one bastion knows how to scan"
    )


def _load_clean(p: Path, fmt: str, data: bytes | None, map_location: str) -> Any:
    if fmt in ("pytorch", "pytorch-legacy"):
        import torch

        source: Any = io.BytesIO(data) if data is not None else str(p)
        try:
            return torch.load(source, map_location=map_location, weights_only=True)
        except Exception as exc:  # torch raises many types here; report them as one
            raise ModelLoadError(f"torch could not load {p} with weights_only=True: {exc}") from exc
    if fmt in ("numpy", "npz"):
        import numpy as np

        try:
            return np.load(p, allow_pickle=False)
        except ValueError as exc:
            raise ModelLoadError(
                f"numpy refused {p} with allow_pickle=False ({exc}); it scanned clean, so if "
                "you trust it, load it with numpy.load(..., allow_pickle=True)"
            ) from exc
    if fmt == "safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise ModelLoadError("loading safetensors needs: pip install safetensors") from exc
        return load_file(str(p), device=map_location)
    if fmt in ("pickle", "joblib", "zlib", "gzip", "bz2", "xz"):
        return _load_joblib(p, data)
    if fmt == "skops":
        return _load_skops(p, data)
    if fmt == "onnx":
        import onnx

        return onnx.load(str(p))
    raise ModelLoadError(
        f"{p} is a {fmt} file; bastion has no safe loader for it (TorchScript and Keras run "
        "code from the archive by design). It scanned clean: load it with its framework if "
        "you trust it."
    )


def _load_joblib(p: Path, data: bytes | None) -> Any:
    import joblib

    if data is None:
        raise ModelLoadError(f"{p} is larger than max_bytes; raise max_bytes to load it")
    try:
        return joblib.load(io.BytesIO(data))
    except Exception as exc:  # joblib and pickle raise many types
        raise ModelLoadError(f"could not load {p}: {exc}") from exc


def _load_skops(p: Path, data: bytes | None) -> Any:
    import skops.io as sio

    from bastion.artifacts.scan._formats import skops_type_allowed

    # trust only the types the allowlist accepts: if the file changed after the scan, a new
    # type stays untrusted and skops refuses it
    untrusted = sio.get_untrusted_types(file=p)
    trusted = [t for t in untrusted if "." in t and skops_type_allowed(*t.rsplit(".", 1))]
    try:
        return sio.load(p, trusted=trusted)
    except Exception as exc:  # skops raises UntrustedTypesFoundException and others
        raise ModelLoadError(f"skops refused {p}: {exc}") from exc
