"""Input coercion and small helpers shared by inference and validation."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from bastion.data.contracts.io import load_data
from bastion.errors import ConfigurationError, InputError

__all__ = ["cat_key", "parse_dates", "prepare", "py", "to_seconds"]

DataKind = Literal["auto", "table", "tensor"]


def cat_key(value: Any) -> str:
    """The canonical text of a category, so ``3``, ``3.0`` and ``"3"`` are one category."""
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    text = str(value)
    low = text.lower()
    if low in ("true", "false"):
        return low
    return text


def py(value: Any) -> Any:
    """A plain Python scalar (for YAML and JSON) from a numpy or pandas scalar."""
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, str):
        return item()
    return value


def prepare(data: Any, kind: DataKind) -> pd.DataFrame | np.ndarray:
    """A data frame (table) or an array (tensor) from what the caller handed over.

    Paths are read with :func:`~bastion.data.contracts.io.load_data`; torch tensors become
    arrays; a 2-D array becomes a table only when ``kind="table"``.
    """
    if kind not in ("auto", "table", "tensor"):
        raise ConfigurationError(f"kind must be 'auto', 'table' or 'tensor', got {kind!r}")
    if isinstance(data, str | Path):
        data = load_data(data)
    if not isinstance(data, pd.DataFrame | np.ndarray):
        detach = getattr(data, "detach", None)
        if callable(detach):  # a torch tensor
            data = detach().cpu().numpy()
        elif isinstance(data, pd.Series):
            data = data.to_frame()
        elif isinstance(data, dict):
            data = pd.DataFrame(data)
        else:
            raise InputError(
                f"cannot validate a {type(data).__name__}; pass a numpy array, torch tensor, "
                "pandas DataFrame or a .csv/.parquet/.npy/.npz path"
            )
    if isinstance(data, np.ndarray) and data.dtype.names is not None:
        data = pd.DataFrame(data)
    if kind == "table" and isinstance(data, np.ndarray):
        if data.ndim != 2:
            raise InputError(f"a table needs a 2-D array, got shape {data.shape}")
        data = pd.DataFrame(data, columns=[f"c{i}" for i in range(data.shape[1])])
    if kind == "tensor" and isinstance(data, pd.DataFrame):
        try:
            data = data.to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError("a tensor contract needs numeric data; this table has "
                             "non-numeric columns") from exc
    return data


def to_seconds(values: pd.Series) -> np.ndarray:
    """Seconds since the epoch of date-times (any resolution), NaN where missing."""
    t = pd.to_datetime(values)
    if getattr(t.dt, "tz", None) is not None:
        t = t.dt.tz_convert("UTC").dt.tz_localize(None)
    ns = t.to_numpy(dtype="datetime64[ns]")
    out = ns.astype(np.int64).astype(np.float64) / 1e9
    out[np.isnat(ns)] = np.nan
    return out


def parse_dates(values: pd.Series) -> pd.Series:
    """Date-times from a datetime column or ISO 8601 text; NaT where a value is not one."""
    if ptypes.is_datetime64_any_dtype(values.dtype):
        return values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pd.to_datetime(values, errors="coerce", format="ISO8601", utc=True)
