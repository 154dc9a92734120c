"""Infer a contract from reference data."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from bastion.data.contracts._common import DataKind, cat_key, parse_dates, prepare, py, to_seconds
from bastion.data.contracts._stats import make_sketch, sig
from bastion.data.contracts._tensor import infer_tensor
from bastion.data.contracts.model import ColumnSpec, Contract, Reference, Sketch, TableContract
from bastion.errors import ConfigurationError, InputError

__all__ = ["infer_contract"]

#: a column needs this many rows with all-distinct values to be inferred ``unique``
UNIQUE_MIN_ROWS = 20
_ISO_DATE = re.compile(
    r"\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$")


def infer_contract(
    data: Any,
    *,
    name: str | None = None,
    kind: DataKind = "auto",
    categorical: Sequence[str] = (),
    categorical_max: int = 50,
    reference_sample: int = 100_000,
    range_tolerance: float = 0.1,
    seed: int = 0,
    immutable: Sequence[str] = (),
    costs: Mapping[str, float] | None = None,
    one_hot: Mapping[str, Sequence[str]] | None = None,
) -> Contract:
    """Infer a :class:`TableContract` or :class:`TensorContract` from reference ``data``.

    ``data`` is a pandas data frame (a table), a numpy array or torch tensor of samples (a
    tensor; ``kind="table"`` reads a 2-D array as a table), or a path to a ``.csv``,
    ``.parquet``, ``.npy`` or ``.npz`` file.

    For a table, each column gets its kind (float, integer, boolean, categorical, string,
    datetime), its observed range, its categories (text columns with at most
    ``categorical_max`` distinct values, pandas ``category`` columns and the columns named in
    ``categorical``), whether it may be missing, and whether its values are unique. For a
    tensor: the sample shape, dtype, value range and per-channel statistics.
    Sketches of the reference distributions are kept for drift checks, computed on at most
    ``reference_sample`` rows (a seeded random subset).

    The rules of attacks on tabular models are recorded on the columns: ``immutable`` names
    columns no perturbation may change, ``costs`` maps a column to the cost of a unit change,
    ``one_hot`` maps a group name to its 0/1 columns (see :mod:`bastion.data.tabular`).

    >>> import numpy as np
    >>> c = infer_contract(np.zeros((10, 3), dtype=np.float32), name="zeros")
    >>> c.shape, c.dtype, c.min, c.max
    ((None, 3), 'float32', 0.0, 0.0)
    """
    if categorical_max < 1:
        raise ConfigurationError(f"categorical_max must be >= 1, got {categorical_max}")
    if reference_sample < 1:
        raise ConfigurationError(f"reference_sample must be >= 1, got {reference_sample}")
    if not (range_tolerance >= 0 and math.isfinite(range_tolerance)):
        raise ConfigurationError(f"range_tolerance must be >= 0, got {range_tolerance}")
    frame = prepare(data, kind)
    label = name or "contract"
    if isinstance(frame, np.ndarray):
        return infer_tensor(frame, name=label, reference_sample=reference_sample,
                            range_tolerance=range_tolerance, seed=seed)
    table = _infer_table(frame, name=label, categorical=tuple(categorical),
                         categorical_max=categorical_max, reference_sample=reference_sample,
                         range_tolerance=range_tolerance, seed=seed)
    return _with_attack_rules(table, immutable, costs or {}, one_hot or {})


def _with_attack_rules(table: TableContract, immutable: Sequence[str],
                       costs: Mapping[str, float], one_hot: Mapping[str, Sequence[str]]
                       ) -> TableContract:
    names = {c.name for c in table.columns}
    groups = {str(col): str(g) for g, cols in one_hot.items() for col in cols}
    unknown = sorted((set(immutable) | set(costs) | set(groups)) - names)
    if unknown:
        raise ConfigurationError(f"attack rules name unknown columns: {', '.join(unknown)}")
    for g, cols in one_hot.items():
        if len(cols) < 2:
            raise ConfigurationError(f"one-hot group {g!r} needs at least 2 columns")
    for col, cost in costs.items():
        if not (isinstance(cost, int | float) and math.isfinite(cost) and cost > 0):
            raise ConfigurationError(f"cost of column {col!r} must be > 0, got {cost!r}")
    columns = []
    for c in table.columns:
        if c.name in groups and c.kind not in ("integer", "boolean", "float"):
            raise ConfigurationError(f"one-hot column {c.name!r} must hold 0/1 numbers")
        columns.append(dataclasses.replace(
            c, immutable=c.name in set(immutable),
            cost=float(costs[c.name]) if c.name in costs else None,
            one_hot=groups.get(c.name)))
    return dataclasses.replace(table, columns=tuple(columns))


def _kind_of(s: pd.Series, forced: bool, categorical_max: int) -> str:
    if forced or isinstance(s.dtype, pd.CategoricalDtype):
        return "categorical"
    if ptypes.is_bool_dtype(s.dtype):
        return "boolean"
    if ptypes.is_datetime64_any_dtype(s.dtype):
        return "datetime"
    if ptypes.is_integer_dtype(s.dtype):
        return "integer"
    if ptypes.is_float_dtype(s.dtype):
        return "float"
    values = s.dropna()
    if len(values) and all(isinstance(v, bool | np.bool_) for v in values):
        return "boolean"
    if len(values) and all(isinstance(v, str) and _ISO_DATE.match(v) for v in values):
        return "datetime"  # ISO dates in text, as a CSV file holds them
    return "categorical" if values.nunique() <= categorical_max else "string"


def _round_up(value: float, digits: int = 3) -> float:
    """``value`` (>= 0) rounded up to ``digits`` significant digits."""
    if value <= 0.0 or not math.isfinite(value):
        return 0.0 if value <= 0.0 else value
    step = 10.0 ** (math.floor(math.log10(value)) - digits + 1)
    return sig(math.ceil(value / step * (1 - 1e-12)) * step, digits + 1)


def _numeric_stats(x: np.ndarray) -> dict[str, float]:
    med = float(np.median(x))
    return {"mean": sig(float(np.mean(x))), "std": sig(float(np.std(x))), "median": sig(med),
            "mad": sig(float(np.median(np.abs(x - med))))}


def _infer_column(s: pd.Series, kind: str, range_tolerance: float
                  ) -> tuple[ColumnSpec, Sketch | None, dict[str, int] | None]:
    name = str(s.name)
    missing = s.isna()
    nullable = bool(missing.any())
    values = s[~missing]
    spec: dict[str, Any] = {"name": name, "kind": kind, "dtype": str(s.dtype),
                            "nullable": nullable}
    sketch = None
    counts = None
    all_distinct = len(values) >= UNIQUE_MIN_ROWS and values.is_unique and not nullable
    if kind in ("float", "integer"):
        x = values.to_numpy(dtype=np.float64)
        x = x[np.isfinite(x)]
        if x.size:
            lo, hi = float(x.min()), float(x.max())
            pad = range_tolerance * (hi - lo)
            lo_r, hi_r = sig(lo), sig(hi)  # rounding must not exclude the reference itself
            below = _round_up(pad + max(0.0, lo_r - lo))
            if lo >= 0.0:  # a column never seen negative (an age, an amount) stays >= 0
                below = min(below, lo_r)
            slack = (below, _round_up(pad + max(0.0, hi - hi_r)))
            spec.update(min=lo_r, max=hi_r, slack=slack, **_numeric_stats(x))
            sketch = make_sketch(x)
        spec["unique"] = kind == "integer" and all_distinct
    elif kind == "datetime":
        ts = parse_dates(values)
        if len(ts):
            secs = to_seconds(ts)
            spec.update(min=ts.min().isoformat(), max=ts.max().isoformat())
            sketch = make_sketch(secs)
    elif kind in ("categorical", "boolean"):
        keys = values.map(cat_key)
        vc = keys.value_counts()
        first = {cat_key(v): py(v) for v in values.drop_duplicates()}
        cats = [first[k] for k in vc.index]
        try:
            cats = sorted(cats)
        except TypeError:  # mixed types keep frequency order
            pass
        spec["categories"] = tuple(cats)
        counts = {str(k): int(c) for k, c in vc.items()}
    else:  # string
        spec["unique"] = all_distinct
    return ColumnSpec(**spec), sketch, counts


def _infer_table(df: pd.DataFrame, *, name: str, categorical: tuple[str, ...],
                 categorical_max: int, reference_sample: int, range_tolerance: float,
                 seed: int) -> TableContract:
    if df.shape[1] == 0 or df.shape[0] == 0:
        raise InputError(f"cannot infer a contract from an empty table (shape {df.shape})")
    unknown = [c for c in categorical if c not in df.columns]
    if unknown:
        raise ConfigurationError(f"categorical names unknown columns: {', '.join(unknown)}")
    names = [str(c) for c in df.columns]
    if len(set(names)) != len(names):
        raise InputError("the table has duplicate column names; rename them first")
    if len(df) > reference_sample:
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(len(df), size=reference_sample, replace=False))
        df = df.iloc[idx]
    columns = []
    sketches: dict[str, Sketch] = {}
    counts: dict[str, dict[str, int]] = {}
    missing: dict[str, float] = {}
    for col in df.columns:
        s = df[col]
        kind = _kind_of(s, col in categorical, categorical_max)
        spec, sketch, cnt = _infer_column(s, kind, range_tolerance)
        columns.append(spec)
        if sketch is not None:
            sketches[spec.name] = sketch
        if cnt is not None:
            counts[spec.name] = cnt
        rate = float(s.isna().mean())
        if rate > 0:
            missing[spec.name] = sig(rate, 4)
    return TableContract(
        name=name,
        columns=tuple(columns),
        reference=Reference(n=len(df), sketches=sketches, counts=counts, missing=missing),
        range_tolerance=range_tolerance,
    )
