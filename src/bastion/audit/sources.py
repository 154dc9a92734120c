"""Where an audit's model and data come from: files, the registry, a remote endpoint.

:func:`resolve_model` turns ``--model`` into a :class:`ModelSource`: the classifier (or
``None`` with the reason, when the scanner refused the file: nothing is loaded then), the
``model`` object of the report (file digests, adapter, capabilities) and the file path the
artifact check scans. :func:`load_dataset` reads an ``.npz`` of ``x`` and ``y`` safely.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bastion.errors import ConfigurationError, InputError

__all__ = [
    "ModelSource",
    "data_info",
    "file_digest",
    "infer_domain",
    "load_arrays",
    "load_dataset",
    "load_named_arrays",
    "model_files",
    "resolve_model",
]

REGISTRY_SCHEME = "registry://"


def file_digest(path: Path) -> str:
    """The hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_files(path: Path) -> tuple[list[dict[str, Any]], str]:
    """``files`` and ``digest`` of the report's model object (see the schema)."""
    if path.is_dir():
        paths = sorted(p for p in path.rglob("*") if p.is_file())
        files = [
            {"path": p.relative_to(path).as_posix(), "sha256": file_digest(p),
             "size": p.stat().st_size}
            for p in paths
        ]
        lines = "".join(f"{f['path']}\0{f['sha256']}\n" for f in files)
        return files, "sha256:" + hashlib.sha256(lines.encode()).hexdigest()
    sha = file_digest(path)
    return [{"path": path.name, "sha256": sha, "size": path.stat().st_size}], f"sha256:{sha}"


# -- data -----------------------------------------------------------------------------------
def load_arrays(path: Path, label: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``y`` of an ``.npz`` (or a ``.csv``/``.parquet`` table, see
    :func:`bastion.data.load_labelled`), checked: numeric ``x`` of shape (n, ...), integer
    labels."""
    x, y, _ = load_named_arrays(path, label)
    return x, y


def load_named_arrays(
    path: Path, label: str | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    """:func:`load_arrays` plus the feature column names of a table (``None`` for an
    ``.npz``); ``label`` names a table's label column."""
    from bastion.data.loaders import load_labelled_table

    x, y, names = load_labelled_table(path, label)
    if x.dtype.kind not in "fiu" or x.ndim < 2:
        raise InputError(
            f"x in {path} must be a numeric array of shape (n, ...), got {x.dtype} {x.shape}"
        )
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise InputError(
            f"y in {path} must be a 1-d array with one label per row of x; "
            f"got y {y.shape} for x {x.shape}"
        )
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise InputError(f"y in {path} must hold integer class labels")
    elif y.dtype.kind not in "iu":
        raise InputError(f"y in {path} must hold integer class labels, got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise InputError(f"y in {path} holds negative labels; classes are numbered from 0")
    return x, y, names


def load_dataset(
    path: Path, bounds: tuple[float, float], num_classes: int | None = None, *,
    arrays: tuple[np.ndarray, np.ndarray] | None = None,
) -> Any:
    """A :class:`bastion.data.loaders.Dataset` from an ``.npz`` (refuses uint8 pixels in [0, 1]
    bounds: divide by 255 or pass bounds 0,255); ``arrays`` are ``path``'s ``(x, y)`` when
    already read."""
    import torch

    from bastion.data.loaders import Dataset

    x_np, y_np = arrays if arrays is not None else load_arrays(path)
    if x_np.dtype == np.uint8 and bounds == (0.0, 1.0) and x_np.max(initial=0) > 1:
        raise InputError(
            f"x in {path} holds uint8 pixels in [0, 255] but the model's bounds are [0, 1]; "
            "divide by 255 or pass --bounds 0,255"
        )
    x = torch.from_numpy(np.ascontiguousarray(x_np, dtype=np.float32))
    y = torch.from_numpy(y_np.astype(np.int64))
    k = num_classes if num_classes is not None else int(y.max()) + 1 if len(y) else 0
    return Dataset(x, y, k, bounds)


def data_info(path: Path, dataset: Any, features: Sequence[str] | None = None
              ) -> dict[str, Any]:
    """The report's ``data`` entry of one data set (``features``: a table's column names)."""
    return {"source": str(path), "sha256": file_digest(path), "n": len(dataset),
            "features": None if features is None else list(features)}


def infer_domain(shape: Sequence[int] | None) -> str:
    """``image`` for samples with two or more axes (H×W, C×H×W), ``tabular`` for vectors."""
    if shape is None:
        return "other"
    return "image" if len(shape) >= 2 else "tabular"


# -- the model ------------------------------------------------------------------------------
@dataclass
class ModelSource:
    """A resolved ``--model``: the classifier or why there is none, and its report object."""

    classifier: Any
    info: dict[str, Any]
    path: Path | None = None
    unavailable: str | None = None
    signature_status: str | None = None
    #: what :func:`bastion.models.loading.load_model` was given: a worker reloads the file
    #: with it when the classifier itself cannot be pickled
    load_options: dict[str, Any] | None = None
    _cleanup: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        """Close a remote client and remove a pulled registry copy."""
        for fn in self._cleanup:
            fn()
        self._cleanup.clear()


def _capabilities(clf: Any) -> list[str]:
    from bastion.models.base import Capability

    caps = clf.capabilities
    return [
        name
        for name, flag in (("gradients", Capability.GRADIENTS), ("scores", Capability.SCORES),
                           ("labels", Capability.LABELS))
        if flag in caps
    ]


def resolve_model(
    source: str,
    *,
    options: dict[str, Any],
    input_shape: Sequence[int] | None,
    num_classes: int | None,
    bounds: tuple[float, float],
    domain: str,
    access: str,
    query_budget: int | None,
    api_key_env: str | None = None,
    workdir: Path | None = None,
    transport: Any = None,
) -> ModelSource:
    """Resolve ``source``: a model file (scanned before loading), ``registry://name@ref``, or an
    http(s) endpoint (a black box: scores or labels per ``access``).

    ``num_classes`` (from the labels) is used for a remote endpoint only; a loaded model's
    own output size wins unless ``options["num_classes"]`` asks for a check.
    """
    if source.startswith(("http://", "https://")):
        return _remote(source, options=options, input_shape=input_shape,
                       num_classes=num_classes, bounds=bounds, domain=domain, access=access,
                       query_budget=query_budget, api_key_env=api_key_env, transport=transport)
    if source.startswith(REGISTRY_SCHEME):
        return _registry(source, options=options, input_shape=input_shape,
                         num_classes=num_classes, bounds=bounds, domain=domain, workdir=workdir)
    path = Path(source)
    if not path.exists():
        raise InputError(f"model file {path} not found")
    files, digest = model_files(path)
    info = {"source": source, "kind": "file", "digest": digest, "files": files,
            "domain": domain, "bounds": list(bounds)}
    return _load_scanned(path, info, options=options, input_shape=input_shape,
                         num_classes=options.get("num_classes"), bounds=bounds)


def _load_scanned(
    path: Path, info: dict[str, Any], *, options: dict[str, Any],
    input_shape: Sequence[int] | None, num_classes: int | None, bounds: tuple[float, float],
) -> ModelSource:
    """Scan first; load only what scanned clean (or what the user trusts)."""
    from bastion.artifacts.scan import scan_path
    from bastion.models.loading import detect_format, load_model

    scan = scan_path(path)
    verdict = str(getattr(scan.verdict, "value", scan.verdict))
    trust = bool(options.get("trust_pickle", False))
    if verdict in {"unsafe", "error"} and not trust:
        what = "did not scan clean" if verdict == "unsafe" else "could not be scanned"
        return ModelSource(
            None, info, path,
            unavailable=f"the model file {what}, so nothing was loaded (see the artifact check)",
        )
    load_options: dict[str, Any] = {"input_shape": options.get("input_shape") or input_shape,
                                    "num_classes": num_classes, "bounds": bounds,
                                    "factory": options.get("factory"), "trust_pickle": trust,
                                    "device": _device(options.get("device", "auto"))}
    clf = load_model(path, **load_options)
    info.update(adapter=f"{type(clf).__name__} ({detect_format(path)})",
                capabilities=_capabilities(clf), input_shape=list(clf.input_shape),
                num_classes=clf.num_classes)
    return ModelSource(clf, info, path, load_options=load_options)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError("device cuda was asked for but no CUDA device is available")
    if name not in {"cpu", "cuda"}:
        raise ConfigurationError(f"device must be auto, cpu or cuda, got {name!r}")
    return name


def _registry(
    source: str, *, options: dict[str, Any], input_shape: Sequence[int] | None,
    num_classes: int | None, bounds: tuple[float, float], domain: str, workdir: Path | None,
) -> ModelSource:
    """Pull ``registry://name@alias-or-version`` (digests and signature checked by the
    registry) into a private folder, then treat it as a file. The registry is configured from
    the same environment as ``bastion registry`` (``BASTION_REGISTRY_METADATA_URL``, ...)."""
    from bastion.artifacts.registry.connect import open_registry_from_env

    ref_text = source[len(REGISTRY_SCHEME):]
    name, _, ref = ref_text.partition("@")
    if not name:
        raise ConfigurationError(
            f"registry reference {source!r} must look like registry://name@alias-or-version"
        )
    ref_value: int | str = int(ref) if ref.isdigit() else (ref or "latest")
    # the service by URL, or the database as the login name: never a claimed identity
    registry = open_registry_from_env()
    tmp = Path(tempfile.mkdtemp(prefix=".bastion-pull-", dir=workdir))
    try:
        with registry:
            version = registry.get(name, ref_value)
            pulled = registry.pull(name, ref_value, tmp / "model")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    target = pulled
    if pulled.is_dir():
        inner = [p for p in pulled.rglob("*") if p.is_file()]
        if len(inner) == 1:
            target = inner[0]
    files, digest = model_files(pulled)
    info = {
        "source": source, "kind": "registry", "digest": digest, "files": files,
        "domain": domain, "bounds": list(bounds),
        "registry": {"name": version.name, "version": version.version,
                     "alias": ref if ref and not ref.isdigit() else None,
                     "digest": version.digest, "signature_status": version.signature_status,
                     "scan_verdict": version.scan_verdict},
    }
    try:
        model = _load_scanned(target, info, options=options, input_shape=input_shape,
                              num_classes=options.get("num_classes"), bounds=bounds)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    model.signature_status = version.signature_status
    model._cleanup.append(lambda: shutil.rmtree(tmp, ignore_errors=True))
    return model


def _remote(
    url: str, *, options: dict[str, Any], input_shape: Sequence[int] | None,
    num_classes: int | None, bounds: tuple[float, float], domain: str, access: str,
    query_budget: int | None, api_key_env: str | None, transport: Any,
) -> ModelSource:
    from bastion.models.remote import RemoteClassifier

    shape = options.get("input_shape") or input_shape
    if shape is None or num_classes is None:
        raise ConfigurationError(
            "a remote model needs the input shape and the number of classes: pass --test (or "
            "--input-shape and --num-classes)"
        )
    headers: dict[str, str] = {}
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise ConfigurationError(
                f"--api-key-env {api_key_env}: that environment variable is not set or empty"
            )
        headers["Authorization"] = f"Bearer {key}"
    mode = options.get("mode") or ("labels" if access == "labels" else "scores")
    if mode not in ("scores", "labels"):
        raise ConfigurationError(f"model_options mode must be scores or labels, got {mode!r}")
    clf = RemoteClassifier(url, input_shape=tuple(shape), num_classes=int(num_classes),
                           bounds=bounds, mode="labels" if mode == "labels" else "scores",
                           query_budget=None, headers=headers, transport=transport)
    info = {"source": url, "kind": "remote", "digest": None, "files": [],
            "adapter": f"RemoteClassifier ({mode})", "capabilities": _capabilities(clf),
            "input_shape": list(clf.input_shape), "num_classes": clf.num_classes,
            "bounds": list(bounds), "domain": domain}
    return ModelSource(clf, info, None, _cleanup=[clf.close])
