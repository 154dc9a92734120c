"""Reading data files and reading/writing contracts as human-editable YAML.

YAML is read with ``yaml.safe_load`` only; arrays with ``allow_pickle=False`` only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bastion._io import atomic_write_text
from bastion.data.contracts.model import (
    COLUMN_KINDS,
    ColumnSpec,
    Contract,
    MahalanobisModel,
    Reference,
    Sketch,
    TableContract,
    TensorContract,
)
from bastion.errors import DataContractError, InputError

__all__ = [
    "contract_from_dict",
    "contract_to_dict",
    "dump_contract",
    "load_contract",
    "load_data",
    "parse_contract",
    "save_contract",
]

FORMAT_VERSION = 1

_HEADER = """\
# bastion data contract (format version {version}).
# Edit freely: rules live under `columns` (tables) or at the top level (tensors).
#   A value may lie `slack: [below, above]` beyond a column's min/max; without slack (and
#   for tensors) range_tolerance x (max - min). Set a column's `drift: false` to skip its
#   distribution check; `pattern` is a full-match regex; `nullable`, `unique`,
#   `max_missing` and `categories` are checked as written. For attacks on tabular models:
#   `immutable: true` columns are never perturbed, `cost` weighs a unit change of a column,
#   columns sharing a `one_hot` group name hold exactly one 1.
# The `reference` section at the end is a machine-made summary of the reference data
# (CDF sketches, category counts) used by the distribution checks: regenerate it with
# `bastion data infer-contract` rather than editing it by hand.
"""


class _Dumper(yaml.SafeDumper):
    """Safe YAML with short lists of scalars written inline, so sketches stay compact."""


def _repr_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(not isinstance(v, dict | list) for v in data) or all(
        isinstance(v, list) and all(not isinstance(x, dict | list) for x in v) for v in data
    )
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _repr_list)


# ---------------------------------------------------------------------------------- to dict
def _sketch_to_dict(s: Sketch) -> dict[str, Any]:
    return {"exact": s.exact, "values": list(s.values), "cdf": list(s.cdf)}


def _reference_to_dict(r: Reference) -> dict[str, Any]:
    out: dict[str, Any] = {"n": r.n}
    if r.missing:
        out["missing"] = dict(r.missing)
    if r.counts:
        out["counts"] = {k: dict(v) for k, v in r.counts.items()}
    if r.sketches:
        out["sketches"] = {k: _sketch_to_dict(s) for k, s in r.sketches.items()}
    if r.mahalanobis is not None:
        m = r.mahalanobis
        out["mahalanobis"] = {
            "threshold": m.threshold,
            "mean": list(m.mean),
            "precision": [list(row) for row in m.precision],
        }
    return out


def _column_to_dict(c: ColumnSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"name": c.name, "kind": c.kind}
    if c.dtype:
        out["dtype"] = c.dtype
    out["nullable"] = c.nullable
    if c.max_missing is not None:
        out["max_missing"] = c.max_missing
    for key in ("min", "max"):
        if getattr(c, key) is not None:
            out[key] = getattr(c, key)
    if c.slack is not None:
        out["slack"] = list(c.slack)
    if c.categories is not None:
        out["categories"] = list(c.categories)
    if c.unique:
        out["unique"] = True
    if c.pattern is not None:
        out["pattern"] = c.pattern
    stats = {k: getattr(c, k) for k in ("mean", "std", "median", "mad")}
    if any(v is not None for v in stats.values()):
        out["stats"] = {k: v for k, v in stats.items() if v is not None}
    if not c.drift:
        out["drift"] = False
    if c.immutable:
        out["immutable"] = True
    if c.cost is not None:
        out["cost"] = c.cost
    if c.one_hot is not None:
        out["one_hot"] = c.one_hot
    return out


def contract_to_dict(contract: Contract) -> dict[str, Any]:
    """A plain dict of ``contract`` (the YAML document)."""
    head: dict[str, Any] = {"version": contract.version, "kind": contract.kind,
                            "name": contract.name}
    if isinstance(contract, TableContract):
        head.update(
            range_tolerance=contract.range_tolerance,
            allow_extra_columns=contract.allow_extra_columns,
            allow_duplicates=contract.allow_duplicates,
            near_duplicate_tolerance=contract.near_duplicate_tolerance,
            outlier_z=contract.outlier_z,
            columns=[_column_to_dict(c) for c in contract.columns],
        )
    else:
        head.update(
            shape=list(contract.shape),
            dtype=contract.dtype,
            min=contract.min,
            max=contract.max,
            range_tolerance=contract.range_tolerance,
            allow_nan=contract.allow_nan,
            allow_duplicates=contract.allow_duplicates,
            near_duplicate_tolerance=contract.near_duplicate_tolerance,
            channel_axis=contract.channel_axis,
            channels=[dict(c) for c in contract.channels],
        )
    head["reference"] = _reference_to_dict(contract.reference)
    return head


# -------------------------------------------------------------------------------- from dict
def _get(d: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str,
         default: Any = ...) -> Any:
    if key not in d:
        if default is ...:
            raise DataContractError(f"{where}: missing required key {key!r}")
        return default
    value = d[key]
    if value is not None and not isinstance(value, kind):
        raise DataContractError(f"{where}: {key!r} has the wrong type ({type(value).__name__})")
    return value


def _num(d: dict[str, Any], key: str, where: str, default: Any = ...) -> Any:
    v = _get(d, key, (int, float), where, default)
    if isinstance(v, bool):
        raise DataContractError(f"{where}: {key!r} must be a number")
    return float(v) if v is not None else None


def _sketch_from(d: Any, where: str) -> Sketch:
    if not isinstance(d, dict):
        raise DataContractError(f"{where} must be a mapping")
    values = tuple(float(v) for v in _get(d, "values", list, where))
    cdf = tuple(float(v) for v in _get(d, "cdf", list, where))
    if len(values) != len(cdf) or not values:
        raise DataContractError(f"{where}: values and cdf must be non-empty and equally long")
    return Sketch(values=values, cdf=cdf, exact=bool(_get(d, "exact", bool, where, True)))


def _reference_from(d: Any) -> Reference:
    if d is None:
        return Reference(n=0)
    if not isinstance(d, dict):
        raise DataContractError("reference must be a mapping")
    where = "reference"
    maha = None
    if d.get("mahalanobis") is not None:
        m = d["mahalanobis"]
        maha = MahalanobisModel(
            mean=tuple(float(v) for v in m["mean"]),
            precision=tuple(tuple(float(v) for v in row) for row in m["precision"]),
            threshold=float(m["threshold"]),
        )
    return Reference(
        n=int(_get(d, "n", int, where, 0)),
        sketches={str(k): _sketch_from(v, f"reference sketch {k!r}")
                  for k, v in (_get(d, "sketches", dict, where, None) or {}).items()},
        counts={str(k): {str(c): int(n) for c, n in (v or {}).items()}
                for k, v in (_get(d, "counts", dict, where, None) or {}).items()},
        missing={str(k): float(v)
                 for k, v in (_get(d, "missing", dict, where, None) or {}).items()},
        mahalanobis=maha,
    )


def _column_from(d: Any, i: int) -> ColumnSpec:
    if not isinstance(d, dict):
        raise DataContractError(f"columns[{i}] must be a mapping with name and kind")
    where = f"column {d.get('name', i)!r}"
    kind = _get(d, "kind", str, where)
    if kind not in COLUMN_KINDS:
        raise DataContractError(f"{where}: kind must be one of {', '.join(COLUMN_KINDS)}, "
                                f"got {kind!r}")
    stats = _get(d, "stats", dict, where, None) or {}
    cats = _get(d, "categories", list, where, None)
    lo = d.get("min")
    hi = d.get("max")
    for key, v in (("min", lo), ("max", hi)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float | str)):
            raise DataContractError(f"{where}: {key} must be a number or a date string")
    slack = _get(d, "slack", list, where, None)
    if slack is not None and (len(slack) != 2 or any(
            isinstance(v, bool) or not isinstance(v, int | float) or v < 0 for v in slack)):
        raise DataContractError(f"{where}: slack must be two numbers >= 0 [below, above]")
    cost = _num(d, "cost", where, None)
    if cost is not None and not (math.isfinite(cost) and cost > 0):
        raise DataContractError(f"{where}: cost must be a number > 0, got {cost!r}")
    return ColumnSpec(
        name=str(_get(d, "name", (str, int), where)),
        kind=kind,
        dtype=str(_get(d, "dtype", str, where, "") or ""),
        nullable=bool(_get(d, "nullable", bool, where, False)),
        max_missing=_num(d, "max_missing", where, None),
        min=float(lo) if isinstance(lo, int | float) else lo,
        max=float(hi) if isinstance(hi, int | float) else hi,
        slack=None if slack is None else (float(slack[0]), float(slack[1])),
        categories=tuple(cats) if cats is not None else None,
        unique=bool(_get(d, "unique", bool, where, False)),
        pattern=_get(d, "pattern", str, where, None),
        mean=_num(stats, "mean", where, None),
        std=_num(stats, "std", where, None),
        median=_num(stats, "median", where, None),
        mad=_num(stats, "mad", where, None),
        drift=bool(_get(d, "drift", bool, where, True)),
        immutable=bool(_get(d, "immutable", bool, where, False)),
        cost=None if cost is None else float(cost),
        one_hot=_get(d, "one_hot", str, where, None),
    )


def contract_from_dict(d: Any) -> Contract:
    """Build a contract from its YAML document, checking every key it uses."""
    if not isinstance(d, dict):
        raise DataContractError("a contract must be a YAML mapping with version, kind and name")
    version = _get(d, "version", int, "contract")
    if version != FORMAT_VERSION:
        raise DataContractError(f"unsupported contract version {version}; this bastion reads "
                                f"version {FORMAT_VERSION}")
    kind = _get(d, "kind", str, "contract")
    name = str(_get(d, "name", (str, int), "contract"))
    common = {
        "name": name,
        "version": version,
        "reference": _reference_from(d.get("reference")),
        "range_tolerance": _num(d, "range_tolerance", "contract", 0.1),
        "allow_duplicates": bool(_get(d, "allow_duplicates", bool, "contract", True)),
        "near_duplicate_tolerance": _num(d, "near_duplicate_tolerance", "contract", 0.01),
    }
    if common["range_tolerance"] < 0:
        raise DataContractError("range_tolerance must be >= 0")
    if kind == "table":
        cols = _get(d, "columns", list, "contract")
        columns = tuple(_column_from(c, i) for i, c in enumerate(cols))
        names = [c.name for c in columns]
        if len(set(names)) != len(names):
            raise DataContractError("contract columns must have distinct names")
        return TableContract(
            columns=columns,
            allow_extra_columns=bool(_get(d, "allow_extra_columns", bool, "contract", False)),
            outlier_z=_num(d, "outlier_z", "contract", 3.5),
            **common,
        )
    if kind == "tensor":
        shape = _get(d, "shape", list, "contract")
        if not shape or any(s is not None and (not isinstance(s, int) or s < 1) for s in shape):
            raise DataContractError("shape must be a list of positive sizes (null for any)")
        channels = _get(d, "channels", list, "contract", None) or []
        return TensorContract(
            shape=tuple(shape),
            dtype=str(_get(d, "dtype", str, "contract")),
            min=_num(d, "min", "contract"),
            max=_num(d, "max", "contract"),
            channel_axis=_get(d, "channel_axis", int, "contract", None),
            channels=tuple({str(k): float(v) for k, v in c.items()} for c in channels),
            allow_nan=bool(_get(d, "allow_nan", bool, "contract", False)),
            **common,
        )
    raise DataContractError(f"contract kind must be 'table' or 'tensor', got {kind!r}")


# ------------------------------------------------------------------------------------ files
def dump_contract(contract: Contract) -> str:
    """The YAML text of ``contract``, with a commented header."""
    body = yaml.dump(contract_to_dict(contract), Dumper=_Dumper, sort_keys=False,
                     allow_unicode=True, width=100)
    return _HEADER.format(version=FORMAT_VERSION) + body


def parse_contract(text: str) -> Contract:
    """A contract from YAML text (``yaml.safe_load``)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DataContractError(f"the contract is not valid YAML: {exc}") from exc
    return contract_from_dict(data)


def save_contract(contract: Contract, path: str | Path) -> Path:
    """Write ``contract`` to ``path`` as YAML (atomically)."""
    return atomic_write_text(path, dump_contract(contract))


def load_contract(path: str | Path) -> Contract:
    """Read a contract written by :func:`save_contract` (and possibly edited by hand)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataContractError(f"{p} is not a UTF-8 text file") from exc
    try:
        return parse_contract(text)
    except DataContractError as exc:
        raise DataContractError(f"{p}: {exc}") from exc


def load_data(path: str | Path) -> Any:
    """A data frame (``.csv``, ``.parquet``) or an array (``.npy``, ``.npz``) from ``path``.

    An ``.npz`` file must hold one array or an array named ``x``.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if not p.exists():
        raise FileNotFoundError(2, "No such file", str(p))
    try:
        if suffix in (".csv", ".tsv"):
            import pandas as pd

            return pd.read_csv(p, sep="\t" if suffix == ".tsv" else ",")
        if suffix in (".parquet", ".pq"):
            import pandas as pd

            return pd.read_parquet(p)
        if suffix == ".npy":
            return np.load(p, allow_pickle=False)
        if suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                if "x" in z.files:
                    return z["x"]
                if len(z.files) == 1:
                    return z[z.files[0]]
                raise InputError(f"{p} holds {len(z.files)} arrays; name the data array 'x'")
    except InputError:
        raise
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {p}: {exc}") from exc
    except Exception as exc:  # pandas/pyarrow parser errors have no common base
        raise InputError(f"cannot read {p}: {type(exc).__name__}: {exc}") from exc
    raise InputError(f"unknown data format {suffix or '(none)'} for {p}; use .csv, .parquet, "
                     ".npy or .npz")
