"""Load a model file into a :class:`~bastion.models.Classifier`, detecting its format by content.

The file's bytes decide the format, never its name (see :func:`detect_format`):

==================  =============================================  ==========================
format              recognised by                                  loaded with
==================  =============================================  ==========================
``torchscript``     zip with ``code/`` and ``constants.pkl``       ``torch.jit.load``
``torch``           zip with ``data.pkl`` (``torch.save``)         ``torch.load``, weights only
``torch-legacy``    the legacy ``torch.save`` magic number         ``torch.load``, weights only
``skops``           zip with ``schema.json``                       ``skops.io.load``
``onnx``            an ONNX ``ModelProto`` (protobuf)              onnxruntime
``pickle``          a pickle stream, plain or compressed (joblib)  refused unless trusted
``xgboost-json``    XGBoost's JSON model document                  bastion's own parser
``xgboost-ubj``     the same document as Universal Binary JSON     bastion's own parser
``lightgbm-text``   LightGBM's text model (``tree`` header)        bastion's own parser
==================  =============================================  ==========================

Tree models (the three native formats, and scikit-learn tree classifiers in a skops file)
become a :class:`~bastion.models.trees.TreeClassifier`: their structure is validated (node
indices, cycles, feature ids, finite values) before anything is evaluated, and bastion
evaluates them itself, so a crafted array never reaches a library's C code.

Safety: a pickle (or a torch file holding more than tensors) can run any code when it is
loaded, so it is refused unless ``trust_pickle=True``, which also emits a ``UserWarning``.
A skops file is loaded only when every type it needs is a scikit-learn or numpy type (or
``trust_pickle=True``). Every file is first scanned statically by :func:`_pre_load_check`
(:mod:`bastion.artifacts.scan`); one that does not scan clean is refused with
:class:`~bastion.errors.UnsafeArtifactError`. Every other failure is a
:class:`~bastion.errors.ModelLoadError` that names the file and says what to do.

What each format becomes: a TorchScript module or a state dict (with ``factory``) becomes a
:class:`~bastion.models.TorchClassifier` in eval mode on ``device`` (these need
``input_shape``; ``num_classes`` is found by one probe forward when not given); an ONNX model
becomes an :class:`~bastion.models.onnx_model.OnnxClassifier`; a scikit-learn estimator goes
through :func:`~bastion.models.sklearn_model.from_sklearn`.

Example
-------
>>> import tempfile, torch
>>> from pathlib import Path
>>> from torch import nn
>>> from bastion.models.loading import detect_format, load_model
>>> d = Path(tempfile.mkdtemp())
>>> torch.save(nn.Linear(4, 3).state_dict(), d / "weights.bin")
>>> detect_format(d / "weights.bin")
'torch'
>>> clf = load_model(d / "weights.bin", input_shape=(4,), factory=lambda: nn.Linear(4, 3))
>>> clf.num_classes
3
"""

from __future__ import annotations

import bz2
import importlib
import lzma
import os
import pickle
import sys
import warnings
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bastion.errors import BastionError, ModelLoadError, UnsafeArtifactError, brief
from bastion.models.base import Classifier
from bastion.models.torch_model import TorchClassifier

__all__ = ["ModelFormat", "detect_format", "load_model"]

Factory = str | Callable[[], nn.Module]
_LEGACY_TORCH_MAGIC = bytes.fromhex("80028a0a6cfc9c46f9206aa85019")
_TRUSTED_SKOPS_PREFIXES = ("sklearn.", "numpy.")
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")


class ModelFormat(StrEnum):
    """The formats :func:`detect_format` recognises."""

    TORCHSCRIPT = "torchscript"
    TORCH = "torch"
    TORCH_LEGACY = "torch-legacy"
    SKOPS = "skops"
    ONNX = "onnx"
    PICKLE = "pickle"
    XGBOOST_JSON = "xgboost-json"
    XGBOOST_UBJ = "xgboost-ubj"
    LIGHTGBM_TEXT = "lightgbm-text"
    UNKNOWN = "unknown"


def _pre_load_check(path: Path, *, trust_pickle: bool = False) -> None:
    """Scan the file statically before any loader touches it (secure by default).

    A file the scanner finds unsafe, or cannot scan, raises
    :class:`~bastion.errors.UnsafeArtifactError` listing what it found, unless
    ``trust_pickle=True``, which downgrades the refusal to a ``UserWarning``. This is the single
    entry point: :func:`load_model` calls it once per file, for every format, before the
    format is even detected.
    """
    from bastion.artifacts.scan import scan_path

    result = scan_path(path)
    verdict = str(getattr(result.verdict, "value", result.verdict))
    if verdict in {"clean", "skipped"}:  # skipped: not a format the scanner knows; loaders decide
        return
    if verdict == "error":
        raise ModelLoadError(
            f"{path} cannot be read safely ({result.error or 'the scan failed'}); "
            "the file may be truncated or corrupt"
        )
    findings = _all_findings(result)
    details = "; ".join(
        f"{f.module}.{f.name}" + (f" ({f.why})" if f.why else "") for f in findings[:5]
    )
    message = (
        f"{path} did not scan clean ({details or 'unsafe content'}); "
        "run `bastion scan` on it for the full report"
    )
    if trust_pickle:
        warnings.warn(message + "; loading anyway because trust_pickle=True", stacklevel=3)
        return
    raise UnsafeArtifactError(
        message + "; pass trust_pickle=True (--trust-pickle) only if you trust its source"
    )


def _all_findings(result: Any) -> list[Any]:
    """Findings of a scan result and of its container members, depth first."""
    out = list(result.findings)
    for member in getattr(result, "members", ()) or ():
        out.extend(_all_findings(member))
    return out


# -- detection ----------------------------------------------------------------------------
def _decompressed_head(head: bytes, path: Path) -> bytes | None:
    """First decompressed bytes of a gzip/zlib/bz2/xz file, or ``None`` if not compressed."""
    try:
        if head[:2] == b"\x1f\x8b":
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(path.read_bytes()[:4096])
        if head[:1] == b"\x78" and head[1:2] in (b"\x01", b"\x5e", b"\x9c", b"\xda"):
            return zlib.decompressobj().decompress(path.read_bytes()[:4096])
        if head[:3] == b"BZh":
            return bz2.BZ2Decompressor().decompress(path.read_bytes()[:8192])
        if head[:6] == b"\xfd7zXZ\x00":
            return lzma.LZMADecompressor().decompress(path.read_bytes()[:8192])
    except (zlib.error, OSError, EOFError, lzma.LZMAError):
        return b""
    return None


def _is_pickle(head: bytes) -> bool:
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _looks_like_onnx(path: Path, head: bytes) -> bool:
    if head[:1] != b"\x08":  # ModelProto starts with field 1 (ir_version), a varint
        return False
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # protobuf's DecodeError and friends
        return False
    return model.ir_version > 0 and len(model.graph.output) > 0


def detect_format(path: str | os.PathLike[str]) -> str:
    """The :class:`ModelFormat` value of a file, judged by its content alone."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {p}: {exc.strerror or exc}") from exc
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(p) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            return ModelFormat.UNKNOWN.value
        if "schema.json" in names:
            return ModelFormat.SKOPS.value
        if any(n.endswith("constants.pkl") for n in names) and any("/code/" in n for n in names):
            return ModelFormat.TORCHSCRIPT.value
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return ModelFormat.TORCH.value
        return ModelFormat.UNKNOWN.value
    if head.startswith(_LEGACY_TORCH_MAGIC):
        return ModelFormat.TORCH_LEGACY.value
    if _is_pickle(head):
        return ModelFormat.PICKLE.value
    from bastion.artifacts.scan._trees import sniff_tree

    tree_format = sniff_tree(head)
    if tree_format is not None:
        return tree_format
    inner = _decompressed_head(head, p)
    if inner is not None:
        return ModelFormat.PICKLE.value if _is_pickle(inner) else ModelFormat.UNKNOWN.value
    if _looks_like_onnx(p, head):
        return ModelFormat.ONNX.value
    return ModelFormat.UNKNOWN.value


# -- helpers ------------------------------------------------------------------------------
def import_factory_module(module_name: str) -> Any:
    """Import ``module_name`` as ``python -m`` would: when it is not importable from the
    installed packages, from the working directory (``--factory mypkg.nets:build`` next to a
    ``mypkg/`` folder works without ``PYTHONPATH=.``). Installed modules keep precedence."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        top = module_name.split(".")[0]
        cwd = os.getcwd()
        here = Path(cwd)
        if exc.name != top or not ((here / top).is_dir() or (here / f"{top}.py").is_file()):
            raise
        if cwd not in sys.path:
            sys.path.append(cwd)
        return importlib.import_module(module_name)


def _resolve_factory(factory: Factory, path: Path) -> nn.Module:
    if isinstance(factory, str):
        module_name, sep, attr = factory.partition(":")
        if not sep or not module_name or not attr:
            raise ModelLoadError(
                f"factory {factory!r} for {path} must look like 'package.module:function'"
            )
        try:
            obj: Any = import_factory_module(module_name)
        except ImportError as exc:
            raise ModelLoadError(
                f"factory module {module_name!r} for {path} cannot be imported ({exc}); check "
                "the name and that the package is installed"
            ) from exc
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise ModelLoadError(
                    f"factory {factory!r} for {path}: {module_name!r} has no attribute {attr!r}"
                )
            obj = getattr(obj, part)
        fn = obj
    else:
        fn = factory
    if not callable(fn):
        raise ModelLoadError(f"factory {factory!r} for {path} is not callable")
    try:
        module = fn()
    except Exception as exc:
        raise ModelLoadError(f"factory {factory!r} for {path} raised {exc!r}") from exc
    if not isinstance(module, nn.Module):
        raise ModelLoadError(
            f"factory {factory!r} for {path} returned {type(module).__name__}, not a "
            "torch.nn.Module"
        )
    return module


def _torch_classifier(
    module: nn.Module,
    path: Path,
    *,
    input_shape: Sequence[int] | None,
    num_classes: int | None,
    bounds: tuple[float, float],
    device: torch.device,
) -> TorchClassifier:
    if input_shape is None:
        raise ModelLoadError(
            f"{path} holds a torch model, which does not record its input shape; pass "
            "input_shape (e.g. (1, 28, 28))"
        )
    shape = tuple(int(s) for s in input_shape)
    module = module.to(device).eval()
    lo, hi = bounds
    with torch.no_grad():
        try:
            out = module(torch.full((2, *shape), (lo + hi) / 2.0, device=device))
        except Exception as exc:
            raise ModelLoadError(
                f"the model in {path} fails on a probe batch of shape {(2, *shape)} "
                f"({brief(exc)}); check input_shape"
            ) from exc
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelLoadError(
            f"the model in {path} returns {got} for a batch of 2 inputs; expected logits of "
            "shape (2, num_classes)"
        )
    k = int(out.shape[1])
    if num_classes is not None and int(num_classes) != k:
        raise ModelLoadError(f"num_classes={num_classes} but the model in {path} outputs {k}")
    return TorchClassifier(module, input_shape=shape, num_classes=k, bounds=bounds)


def _warn_pickle(path: Path) -> None:
    warnings.warn(
        f"loading {path} with trust_pickle=True: this file can run arbitrary code when loaded; "
        "prefer skops, ONNX or TorchScript for models you share",
        UserWarning,
        stacklevel=4,
    )


def _wrap_object(
    obj: Any,
    path: Path,
    *,
    input_shape: Sequence[int] | None,
    num_classes: int | None,
    bounds: tuple[float, float],
    device: torch.device,
) -> Classifier:
    if isinstance(obj, nn.Module):
        return _torch_classifier(
            obj,
            path,
            input_shape=input_shape,
            num_classes=num_classes,
            bounds=bounds,
            device=device,
        )
    if isinstance(obj, Classifier):
        return obj
    tree = _sklearn_tree_classifier(obj, bounds)
    if tree is not None:
        if num_classes is not None and int(num_classes) != tree.num_classes:
            raise ModelLoadError(
                f"num_classes={num_classes} but the tree model in {path} has {tree.num_classes}"
            )
        return tree
    if hasattr(obj, "predict") and hasattr(obj, "fit"):
        from bastion.models.sklearn_model import from_sklearn

        clf = from_sklearn(obj, input_shape=input_shape, bounds=bounds)
        if num_classes is not None and int(num_classes) != clf.num_classes:
            raise ModelLoadError(
                f"num_classes={num_classes} but the estimator in {path} has {clf.num_classes}"
            )
        return clf
    raise ModelLoadError(
        f"{path} holds a {type(obj).__name__}, not a model bastion can wrap (a torch module, "
        "a scikit-learn classifier or a bastion Classifier)"
    )


def _sklearn_tree_classifier(obj: Any, bounds: tuple[float, float]) -> Classifier | None:
    """A validated :class:`TreeClassifier` for a scikit-learn tree classifier, else ``None``."""
    from sklearn.base import BaseEstimator

    if not isinstance(obj, BaseEstimator):
        return None
    from bastion.models.trees import TreeClassifier
    from bastion.models.trees._convert import SKLEARN_TREE_TYPES, from_sklearn_trees

    if type(obj).__name__ not in SKLEARN_TREE_TYPES:
        return None
    return TreeClassifier(from_sklearn_trees(obj), bounds=bounds)


def _load_tree_file(path: Path, fmt: str, bounds: tuple[float, float]) -> Classifier:
    from bastion.artifacts.scan._trees import parse_tree_model
    from bastion.models.trees import TreeClassifier

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {path}: {exc.strerror or exc}") from exc
    try:
        ensemble = parse_tree_model(fmt, data)
    except ModelLoadError as exc:
        raise ModelLoadError(f"refusing {path}: {exc}") from exc
    return TreeClassifier(ensemble, bounds=bounds)


# -- loaders ------------------------------------------------------------------------------
def _load_torchscript(path: Path, device: torch.device) -> nn.Module:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated
            return torch.jit.load(str(path), map_location=device)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load TorchScript model {path}: {brief(exc)}; re-save it with torch.jit.save"
        ) from exc


def _state_dict_of(obj: Any) -> Mapping[str, torch.Tensor] | None:
    if isinstance(obj, Mapping):
        for key in _STATE_DICT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner:
                obj = inner
                break
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return obj
    return None


def _load_torch(
    path: Path, factory: Factory | None, trust_pickle: bool, device: torch.device
) -> nn.Module | Any:
    try:
        obj = torch.load(str(path), map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            raise ModelLoadError(
                f"{path} holds pickled Python objects beyond tensors (e.g. a whole module saved "
                "with torch.save(model)), which can run code on load; save model.state_dict() "
                "and pass factory=..., or export TorchScript/ONNX, or pass trust_pickle=True "
                "only if you trust the file's source"
            ) from exc
        _warn_pickle(path)
        try:
            return torch.load(str(path), map_location=device, weights_only=False)
        except Exception as exc2:
            raise ModelLoadError(f"cannot load torch file {path}: {exc2}") from exc2
    except Exception as exc:
        raise ModelLoadError(
            f"cannot read torch file {path}: {brief(exc)}; the file may be truncated or corrupt"
        ) from exc
    state = _state_dict_of(obj)
    if state is None:
        raise ModelLoadError(
            f"{path} is a torch file but not a state dict of tensors (got "
            f"{type(obj).__name__}); save model.state_dict()"
        )
    if factory is None:
        raise ModelLoadError(
            f"{path} is a state dict (weights only); pass factory='package.module:function' "
            "naming a function that builds the nn.Module"
        )
    module = _resolve_factory(factory, path)
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ModelLoadError(
            f"the state dict in {path} does not fit the factory's module: missing keys "
            f"{missing[:8]}, unexpected keys {unexpected[:8]}; check the factory builds the "
            "same architecture"
        )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(
            f"the state dict in {path} does not fit the factory's module: {str(exc).strip()[:400]}"
        ) from exc
    return module


def _load_skops(path: Path, trust_pickle: bool) -> Any:
    import skops.io as sio

    try:
        untrusted = sio.get_untrusted_types(file=str(path))
    except Exception as exc:
        raise ModelLoadError(f"cannot read skops file {path}: {exc}") from exc
    foreign = [t for t in untrusted if not t.startswith(_TRUSTED_SKOPS_PREFIXES)]
    if foreign:
        if not trust_pickle:
            raise ModelLoadError(
                f"skops file {path} needs types outside scikit-learn and numpy: {foreign[:8]}; "
                "inspect them and pass trust_pickle=True only if you trust the file's source"
            )
        _warn_pickle(path)
    try:
        return sio.load(str(path), trusted=untrusted)
    except Exception as exc:
        raise ModelLoadError(f"cannot load skops file {path}: {exc}") from exc


def _load_pickle(path: Path, trust_pickle: bool) -> Any:
    if not trust_pickle:
        raise ModelLoadError(
            f"refusing to load {path}: it is a pickle/joblib file, which can run arbitrary code "
            "when loaded; convert the model to skops, ONNX or TorchScript, or pass "
            "trust_pickle=True only if you trust the file's source"
        )
    _warn_pickle(path)
    import joblib

    try:
        return joblib.load(path)
    except Exception as exc:
        raise ModelLoadError(f"cannot unpickle {path}: {exc}") from exc


# -- entry point --------------------------------------------------------------------------
def load_model(
    path: str | os.PathLike[str],
    *,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    factory: Factory | None = None,
    trust_pickle: bool = False,
    device: str | torch.device | None = None,
) -> Classifier:
    """Load the model in ``path`` (format detected by content) as a :class:`Classifier`.

    Parameters
    ----------
    input_shape, num_classes, bounds:
        Passed to the adapter. Torch models need ``input_shape``; ``num_classes`` is checked
        against the model when given, and inferred otherwise.
    factory:
        For a torch state dict: ``"package.module:function"`` (or a callable) returning the
        ``nn.Module`` to load the weights into.
    trust_pickle:
        Allow formats that can run code on load (pickle, joblib, torch files with pickled
        objects, skops files with foreign types). Warns.
    device:
        Where torch models are placed (default CPU); other formats run on the CPU.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"model file {p} does not exist or is not a regular file")
    _pre_load_check(p, trust_pickle=trust_pickle)
    try:
        dev = torch.device(device) if device is not None else torch.device("cpu")
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"invalid device {device!r} for {p}: {exc}") from exc
    fmt = detect_format(p)
    opts: dict[str, Any] = {
        "input_shape": input_shape,
        "num_classes": num_classes,
        "bounds": bounds,
        "device": dev,
    }
    try:
        if fmt == ModelFormat.TORCHSCRIPT:
            return _wrap_object(_load_torchscript(p, dev), p, **opts)
        if fmt in (ModelFormat.TORCH, ModelFormat.TORCH_LEGACY):
            return _wrap_object(_load_torch(p, factory, trust_pickle, dev), p, **opts)
        if fmt == ModelFormat.ONNX:
            from bastion.models.onnx_model import OnnxClassifier

            return OnnxClassifier(
                p, input_shape=input_shape, num_classes=num_classes, bounds=bounds
            )
        if fmt == ModelFormat.SKOPS:
            return _wrap_object(_load_skops(p, trust_pickle), p, **opts)
        if fmt == ModelFormat.PICKLE:
            return _wrap_object(_load_pickle(p, trust_pickle), p, **opts)
        if fmt in (ModelFormat.XGBOOST_JSON, ModelFormat.XGBOOST_UBJ, ModelFormat.LIGHTGBM_TEXT):
            clf = _load_tree_file(p, fmt, bounds)
            if num_classes is not None and int(num_classes) != clf.num_classes:
                raise ModelLoadError(
                    f"num_classes={num_classes} but the tree model in {p} has {clf.num_classes}"
                )
            return clf
    except ModelLoadError:
        raise
    except BastionError as exc:
        raise ModelLoadError(f"cannot use the model in {p}: {brief(exc)}") from exc
    raise ModelLoadError(
        f"{p} is not a model format bastion recognises (TorchScript, torch state dict, ONNX, "
        "skops, pickle/joblib, XGBoost JSON/UBJ, LightGBM text); it may be corrupt or truncated"
    )
