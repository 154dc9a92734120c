"""Loaders for the data sets bastion trains and evaluates on.

Nothing here downloads: scikit-learn's digits ship with scikit-learn, MNIST is read from idx
files on disk, and user data comes from ``.npz`` files holding ``x`` and ``y``.
"""

from __future__ import annotations

import gzip
import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bastion.errors import InputError

__all__ = [
    "Dataset",
    "load_digits",
    "load_labelled",
    "load_labelled_table",
    "load_mnist",
    "load_npz",
    "shared_mnist_dir",
]

#: what ``load_labelled`` reads, as error messages name it
SUPPORTED = (
    ".npz with arrays x and y, or a table (.csv, .parquet) with one row per sample and the "
    "label in a column named y, label, target or class (else the last column)"
)
_LABEL_COLUMNS = ("y", "label", "target", "class")


@dataclass(frozen=True)
class Dataset:
    """Inputs ``x`` (float32, in ``bounds``) and integer labels ``y``."""

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    bounds: tuple[float, float] = (0.0, 1.0)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def split(self, n_first: int) -> tuple[Dataset, Dataset]:
        """The first ``n_first`` samples and the rest."""
        a = Dataset(self.x[:n_first], self.y[:n_first], self.num_classes, self.bounds)
        b = Dataset(self.x[n_first:], self.y[n_first:], self.num_classes, self.bounds)
        return a, b


def load_digits() -> Dataset:
    """scikit-learn's 8×8 digits (1,797 images) scaled to [0, 1], shape ``(n, 1, 8, 8)``."""
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    x = torch.tensor(bunch.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(bunch.target, dtype=torch.long)
    return Dataset(x, y, 10)


def shared_mnist_dir() -> Path | None:
    """The MNIST folder: ``$BASTION_MNIST_DIR`` when set (and only it: a folder named on
    purpose is never replaced by another one), else ``../shared/data/mnist`` above the cwd."""
    env = os.environ.get("BASTION_MNIST_DIR")
    if env:
        return Path(env) if (Path(env) / "t10k-images-idx3-ubyte.gz").is_file() else None
    candidates: list[Path] = []
    here = Path.cwd().resolve()
    for parent in [here, *here.parents][:4]:
        candidates.append(parent / "shared" / "data" / "mnist")
        candidates.append(parent.parent / "shared" / "data" / "mnist")
    for c in candidates:
        if (c / "t10k-images-idx3-ubyte.gz").is_file():
            return c
    return None


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise InputError(f"cannot read idx file {path}: {exc}") from exc
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise InputError(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise InputError(f"{path} is truncated (idx header)")
    dims = struct.unpack(">" + "I" * ndim, data[4:header])
    count = int(np.prod(dims))
    if len(data) - header != count:
        raise InputError(f"{path} holds {len(data) - header} bytes, its header says {count}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def load_mnist(directory: str | Path | None = None, *, prefix: str = "t10k") -> Dataset:
    """MNIST from ``{prefix}-images-idx3-ubyte.gz`` and its labels, shape ``(n, 1, 28, 28)``."""
    d = Path(directory) if directory is not None else shared_mnist_dir()
    if d is None:
        raise InputError(
            "MNIST idx files not found (bastion downloads nothing): put "
            "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz from an MNIST mirror in a "
            "folder and set BASTION_MNIST_DIR to it, or use --data digits"
        )
    images = _read_idx(d / f"{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(d / f"{prefix}-labels-idx1-ubyte.gz")
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise InputError(
            f"MNIST files in {d} disagree: {images.shape} images, {labels.shape} labels"
        )
    x = torch.tensor(images, dtype=torch.float32).div_(255.0).unsqueeze(1)
    y = torch.tensor(labels, dtype=torch.long)
    return Dataset(x, y, 10)


def load_labelled(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` from an ``.npz`` (arrays ``x`` and ``y``) or a ``.csv``/``.parquet`` table:
    every column but the label (``y``, ``label``, ``target`` or ``class``, else the last) is
    a numeric feature. Anything else is refused with a message naming the supported formats.
    """
    x, y, _ = load_labelled_table(path)
    return x, y


def load_labelled_table(
    path: str | Path, label: str | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    """``(x, y, feature names)`` as :func:`load_labelled` reads them; the names (in the
    table's column order) are ``None`` for an ``.npz``. ``label`` names the label column of a
    table (default: ``y``, ``label``, ``target`` or ``class``, else the last column).
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".npz":
        x, y = load_npz(p)
        return x, y, None
    if suffix not in (".csv", ".parquet"):
        raise InputError(f"cannot read {p}: the data must be an {SUPPORTED}")
    if not p.is_file():
        raise InputError(f"data file not found: {p}")
    import pandas as pd

    try:
        df = pd.read_csv(p) if suffix == ".csv" else pd.read_parquet(p)
    except (ValueError, OSError, ImportError) as exc:
        raise InputError(f"{p} is not a readable {suffix[1:]} table: {exc}") from exc
    if df.shape[1] < 2 or df.shape[0] < 1:
        raise InputError(f"{p} needs at least one feature column, a label column and a row")
    if label is not None:
        if label not in df.columns:
            raise InputError(f"{p} has no label column {label!r}; its columns are "
                             f"{', '.join(map(str, df.columns[:20]))}")
        column = label
    else:
        lowered = {str(c).lower(): c for c in df.columns}
        column = next((lowered[n] for n in _LABEL_COLUMNS if n in lowered), df.columns[-1])
    features = df.drop(columns=[column])
    bad = [str(c) for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if bad:
        raise InputError(
            f"{p}: feature columns must be numeric; {', '.join(bad[:5])} "
            f"{'is' if len(bad) == 1 else 'are'} not (encode them, or drop them)"
        )
    if features.isna().to_numpy().any():
        raise InputError(f"{p} has missing feature values; fill or drop those rows")
    y = df[column]
    if not pd.api.types.is_numeric_dtype(y):
        raise InputError(f"{p}: the label column {column!r} must hold integer class ids")
    names = tuple(str(c) for c in features.columns)
    return features.to_numpy(dtype=np.float32), y.to_numpy(), names


def load_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read ``x`` and ``y`` from an ``.npz`` file without unpickling anything."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"data file not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as npz:
            keys = set(npz.files)
            if not {"x", "y"} <= keys:
                raise InputError(
                    f"{p} must hold arrays 'x' and 'y'; it holds {sorted(keys) or 'nothing'}"
                )
            return np.asarray(npz["x"]), np.asarray(npz["y"])
    except ValueError as exc:
        raise InputError(f"{p}: {exc} (object arrays are refused)") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{p} is not a readable .npz file ({exc}); the data must be an "
                         f"{SUPPORTED}") from exc
