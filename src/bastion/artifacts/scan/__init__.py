"""Static scanning of model files: find what would run code when a file is loaded.

The scanner never unpickles, imports or runs anything from the file. It identifies formats
by content (pickle of every protocol, legacy and zip PyTorch checkpoints, TorchScript,
joblib, numpy ``.npy``/``.npz``, safetensors, ONNX, Keras ``.h5``/``.keras``, skops, and
zip/tar/gzip/bz2/xz/7z containers), simulates the pickle machine to resolve every global it
would import, and judges each against an allowlist of what benign model files need.

>>> import io, os, pickle, tempfile
>>> class Payload:
...     def __reduce__(self):
...         return (os.getcwd, ())
>>> with tempfile.TemporaryDirectory() as d:
...     path = os.path.join(d, "model.bin")
...     with open(path, "wb") as f:
...         pickle.dump(Payload(), f)
...     result = scan_path(path)
>>> result.verdict.value, result.findings[0].name
('unsafe', 'getcwd')
"""

from bastion.artifacts.scan._report import render_json, render_sarif, render_table
from bastion.artifacts.scan._scanner import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_DEPTH,
    scan_path,
    scan_paths,
)
from bastion.artifacts.scan._types import FileScan, Finding, ScanReport, Severity, Verdict
from bastion.artifacts.scan._units import scan_targets

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DEPTH",
    "FileScan",
    "Finding",
    "ScanReport",
    "Severity",
    "Verdict",
    "render_json",
    "render_sarif",
    "render_table",
    "scan_path",
    "scan_paths",
    "scan_targets",
]
