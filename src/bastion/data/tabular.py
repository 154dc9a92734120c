"""Tabular inputs and their rules: the feature schema every attack on a table respects.

A :class:`FeatureSchema` is the numeric view of a data contract
(:class:`~bastion.data.contracts.TableContract`) that models see: one entry per model input
column, in the model's order, with

- the accepted range ``[low, high]`` (exactly what ``bastion data validate`` accepts),
- ``integer`` columns (integer kind, boolean, or integer category codes),
- ``categories``: the allowed codes of a categorical column with numeric categories,
- one-hot ``groups`` (columns sharing a contract ``one_hot`` name: exactly one is 1),
- ``immutable`` columns (never perturbed) and per-column ``cost`` (default 1).

:meth:`FeatureSchema.project` maps any candidate row onto the rules, moving each column only
*towards* the original row, so a row inside an L∞/L1/L2 ball stays inside it: every attack
applies it (:meth:`bastion.attacks.evasion.EvasionAttack.generate` with ``constraints=``) and
no attack returns a row the contract rejects. :meth:`FeatureSchema.check` counts the rules a
row breaks (used to count other tools' violations too).

>>> import numpy as np, pandas as pd
>>> from bastion.data.contracts import infer_contract
>>> df = pd.DataFrame({"age": [20, 35, 60], "income": [1.0e3, 2.5e3, 4.0e3], "id": [7, 8, 9]})
>>> schema = FeatureSchema.from_contract(infer_contract(df, immutable=["id"]))
>>> x0 = df.to_numpy(dtype=float)
>>> schema.project(x0 + [[3.4, 10.0, 5.0]] * 3, x0)[0].tolist()
[23.0, 1010.0, 7.0]
>>> schema.check(x0 + [[0.5, 0.0, 0.0]] * 3).tolist()  # fractional ages
[1, 1, 1]
>>> schema.check(x0 + [[0.0, 0.0, 1.0]] * 3, x0).tolist()  # ids changed; 10 out of range
[1, 1, 2]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bastion.errors import ConfigurationError, InputError

__all__ = ["FeatureSchema", "load_table", "make_mixed_table", "table_matrix", "to_frame"]

_TOL = 1e-9


@dataclass(frozen=True)
class FeatureSchema:
    """Per-column rules of a model's tabular input (see the module docstring)."""

    names: tuple[str, ...]
    low: np.ndarray
    high: np.ndarray
    integer: np.ndarray
    immutable: np.ndarray
    cost: np.ndarray
    categories: dict[int, np.ndarray]
    groups: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        d = len(self.names)
        for name in ("low", "high", "integer", "immutable", "cost"):
            if np.shape(getattr(self, name)) != (d,):
                raise ConfigurationError(f"schema {name} must have one entry per column ({d})")
        if np.any(self.low > self.high):
            bad = self.names[int(np.flatnonzero(self.low > self.high)[0])]
            raise ConfigurationError(f"schema column {bad!r} has low > high")
        if np.any(~(self.cost > 0)) or not np.all(np.isfinite(self.cost)):
            raise ConfigurationError("schema costs must be finite and > 0")

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def unconstrained(cls, n_features: int, names: Sequence[str] | None = None) -> FeatureSchema:
        """No rules but finiteness: every column free over the real line."""
        labels = tuple(names) if names is not None else tuple(f"x{i}" for i in range(n_features))
        return cls(
            names=labels,
            low=np.full(n_features, -np.inf),
            high=np.full(n_features, np.inf),
            integer=np.zeros(n_features, dtype=bool),
            immutable=np.zeros(n_features, dtype=bool),
            cost=np.ones(n_features),
            categories={},
            groups=(),
        )

    @classmethod
    def from_contract(cls, contract: Any, columns: Sequence[str] | None = None) -> FeatureSchema:
        """The schema of ``columns`` (default: every column, in order) of a table contract."""
        from bastion.data.contracts import TableContract
        from bastion.data.contracts.validate import _bounds

        if not isinstance(contract, TableContract):
            raise ConfigurationError("a feature schema needs a table contract, not a tensor one")
        names = tuple(columns) if columns is not None else tuple(c.name for c in contract.columns)
        specs = [contract.column(n) for n in names]
        d = len(specs)
        low, high = np.full(d, -np.inf), np.full(d, np.inf)
        integer = np.zeros(d, dtype=bool)
        cats: dict[int, np.ndarray] = {}
        group_of: dict[str, list[int]] = {}
        for i, spec in enumerate(specs):
            if spec.kind in ("float", "integer"):
                low[i], high[i] = _bounds(spec, contract.range_tolerance, False)
                integer[i] = spec.kind == "integer"
            elif spec.kind in ("categorical", "boolean"):
                values = [v for v in spec.categories or () if v is not None]
                try:
                    codes = np.asarray(sorted(float(v) for v in values))
                except (TypeError, ValueError):
                    raise ConfigurationError(
                        f"column {spec.name!r} has text categories; encode them as numeric codes "
                        "or one-hot columns before a model sees them"
                    ) from None
                if codes.size == 0:
                    raise ConfigurationError(f"column {spec.name!r} has no categories")
                cats[i] = codes
                low[i], high[i] = float(codes[0]), float(codes[-1])
                integer[i] = bool(np.all(codes == np.round(codes)))
            else:
                raise ConfigurationError(
                    f"column {spec.name!r} is {spec.kind}; models take numeric columns only"
                )
            if spec.one_hot is not None:
                group_of.setdefault(spec.one_hot, []).append(i)
        for g, idx in group_of.items():
            if len(idx) < 2:
                raise ConfigurationError(f"one-hot group {g!r} has only one model column")
        return cls(
            names=names,
            low=low,
            high=high,
            integer=integer,
            immutable=np.array([s.immutable for s in specs], dtype=bool),
            cost=np.array([s.cost if s.cost is not None else 1.0 for s in specs]),
            categories=cats,
            groups=tuple(tuple(v) for v in group_of.values()),
        )

    # -- properties -----------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return len(self.names)

    @property
    def bounds(self) -> tuple[float, float]:
        """One interval holding every column's range (for the scalar ``bounds`` of adapters)."""
        lo = float(self.low.min()) if np.all(np.isfinite(self.low)) else -1e12
        hi = float(self.high.max()) if np.all(np.isfinite(self.high)) else 1e12
        return lo, hi

    def grouped(self) -> np.ndarray:
        """Mask of columns that belong to a one-hot group."""
        mask = np.zeros(self.n_features, dtype=bool)
        for g in self.groups:
            mask[list(g)] = True
        return mask

    def allowed_values(self, i: int) -> np.ndarray | None:
        """The finite set of values column ``i`` may take, or ``None`` for an interval."""
        if i in self.categories:
            return self.categories[i]
        if self.grouped()[i]:
            return np.array([0.0, 1.0])
        return None

    # -- rules ----------------------------------------------------------------------------
    def _matrix(self, x: Any, name: str) -> np.ndarray:
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != self.n_features:
            raise InputError(
                f"{name} must have shape (n, {self.n_features}) for this schema, got {arr.shape}"
            )
        return arr

    def project(
        self, x: Any, x0: Any, *, norm: str | None = None, eps: float | None = None
    ) -> np.ndarray:
        """The rows ``x`` moved onto the rules, each column only towards the original ``x0``.

        Immutable columns take ``x0``'s value; ranges clip; integer columns round towards
        ``x0``; a category code becomes the allowed code nearest ``x`` between ``x0`` and
        ``x``; a one-hot group becomes the one-hot vector of its largest entry, or ``x0``'s
        when that change would leave the ``norm`` ball of radius ``eps`` (when given).
        ``x0`` must satisfy the rules (a row the contract accepts).
        """
        xa, xo = self._matrix(x, "x").copy(), self._matrix(x0, "x0")
        if xa.shape != xo.shape:
            raise InputError(f"x has shape {xa.shape} but x0 has {xo.shape}")
        xa = np.where(np.isfinite(xa), xa, xo)
        xa = np.where(self.immutable, xo, xa)
        xa = np.clip(xa, np.minimum(self.low, xo), np.maximum(self.high, xo))
        towards = np.where(xa >= xo, np.floor(xa + _TOL), np.ceil(xa - _TOL))
        xa = np.where(self.integer & ~self.grouped(), towards, xa)
        for i, codes in self.categories.items():
            xa[:, i] = _nearest_code_between(codes, xa[:, i], xo[:, i])
        for g in self.groups:
            cols = list(g)
            block = xa[:, cols]
            onehot = np.zeros_like(block)
            onehot[np.arange(block.shape[0]), block.argmax(axis=1)] = 1.0
            xa[:, cols] = onehot
        if self.groups and eps is not None and norm is not None:
            xa = self._fit_ball(xa, xo, norm, eps)
        return xa

    def _fit_ball(self, xa: np.ndarray, xo: np.ndarray, norm: str, eps: float) -> np.ndarray:
        """Undo one-hot changes (largest first) of rows that left the ball."""
        for g in self.groups:
            cols = np.asarray(g, dtype=np.int64)
            out = self.distance(xa, xo, norm, weighted=False) > eps * (1 + 1e-9) + 1e-12
            if not out.any():
                break
            xa[np.ix_(out, cols)] = xo[np.ix_(out, cols)]
        return xa

    def distance(
        self, x: Any, x0: Any, norm: str = "linf", *, weighted: bool = True
    ) -> np.ndarray:
        """Cost-weighted distance per row: ``max|c*d|`` (linf), ``sum|c*d|`` (l1) or l2."""
        d = self._matrix(x, "x") - self._matrix(x0, "x0")
        if weighted:
            d = d * self.cost
        if norm == "linf":
            return np.abs(d).max(axis=1)
        if norm == "l1":
            return np.abs(d).sum(axis=1)
        if norm == "l2":
            return np.sqrt((d**2).sum(axis=1))
        raise ConfigurationError(f"norm must be linf, l1 or l2, got {norm!r}")

    def check(self, x: Any, x0: Any | None = None) -> np.ndarray:
        """The number of rules each row of ``x`` breaks (``x0`` given: immutables too)."""
        xa = self._matrix(x, "x")
        bad = ~np.isfinite(xa)
        with np.errstate(invalid="ignore"):
            bad |= (xa < self.low - _TOL * np.maximum(1.0, np.abs(self.low))) | (
                xa > self.high + _TOL * np.maximum(1.0, np.abs(self.high))
            )
            bad |= self.integer & (np.abs(xa - np.round(xa)) > 1e-6)
        for i, codes in self.categories.items():
            bad[:, i] |= np.min(np.abs(xa[:, i, None] - codes[None, :]), axis=1) > 1e-6
        count = bad.sum(axis=1)
        for g in self.groups:
            block = xa[:, list(g)]
            ok = np.all((np.abs(block) < 1e-6) | (np.abs(block - 1) < 1e-6), axis=1) & (
                np.abs(block.sum(axis=1) - 1) < 1e-6
            )
            count += ~ok
        if x0 is not None:
            xo = self._matrix(x0, "x0")
            count += (self.immutable & (np.abs(xa - xo) > 0)).sum(axis=1)
        return count

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (for reports)."""
        return {
            "names": list(self.names),
            "low": [None if not math.isfinite(v) else float(v) for v in self.low],
            "high": [None if not math.isfinite(v) else float(v) for v in self.high],
            "integer": [self.names[i] for i in np.flatnonzero(self.integer)],
            "immutable": [self.names[i] for i in np.flatnonzero(self.immutable)],
            "cost": {self.names[i]: float(c) for i, c in enumerate(self.cost) if c != 1.0},
            "categories": {self.names[i]: c.tolist() for i, c in self.categories.items()},
            "one_hot": [[self.names[i] for i in g] for g in self.groups],
        }


def _nearest_code_between(codes: np.ndarray, x: np.ndarray, x0: np.ndarray) -> np.ndarray:
    """Per row, the code nearest ``x`` among the codes between ``x0`` and ``x`` (and ``x0``)."""
    lo, hi = np.minimum(x, x0), np.maximum(x, x0)
    inside = (codes[None, :] >= lo[:, None] - _TOL) & (codes[None, :] <= hi[:, None] + _TOL)
    dist = np.where(inside, np.abs(codes[None, :] - x[:, None]), np.inf)
    best = codes[np.argmin(dist, axis=1)]
    return np.where(np.isfinite(dist.min(axis=1)), best, x0)


def load_table(data: Any) -> pd.DataFrame:
    """A data frame from a frame, or a ``.csv``/``.parquet`` path (named columns)."""
    if isinstance(data, pd.DataFrame):
        return data
    path = Path(data)
    if not path.is_file():
        raise InputError(f"no such table file: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise InputError(f"cannot read table {path}: {exc}") from exc
    raise InputError(f"{path}: expected a .csv or .parquet table")


def table_matrix(frame: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """The float64 matrix of ``columns`` (in that order), refusing missing or text columns."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"the table lacks the model's columns: {', '.join(missing[:10])}")
    try:
        out = frame[list(columns)].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"the model's columns must be numeric (encode categories as codes): {exc}"
        ) from exc
    if not np.all(np.isfinite(out)):
        raise InputError("the table has missing or infinite values in the model's columns")
    return out


def to_frame(x: Any, like: pd.DataFrame) -> pd.DataFrame:
    """Rows ``x`` as a frame with ``like``'s columns and dtypes (integer columns stay integer)."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != like.shape[1]:
        raise InputError(f"x must have shape (n, {like.shape[1]}), got {arr.shape}")
    frame = pd.DataFrame(arr, columns=like.columns)
    for col, dtype in like.dtypes.items():
        if pd.api.types.is_integer_dtype(dtype):
            frame[col] = np.round(frame[col].to_numpy()).astype(dtype)
    return frame


def make_mixed_table(
    n_samples: int = 600, *, seed: int = 0
) -> tuple[pd.DataFrame, np.ndarray, dict[str, Any]]:
    """A synthetic credit-style table with mixed column kinds, for tests, demos and benchmarks.

    Columns: five float features from ``make_classification`` (``f0..f4``), an integer ``age``
    (18-90), an integer ``n_accounts`` (0-12), a categorical code ``region`` (0-3), a one-hot
    ``channel`` group (``channel_web``, ``channel_branch``, ``channel_phone``) and an
    immutable ``customer_id``. The label depends on the floats, age, accounts and channel.
    Returns the frame, the labels and the rules to pass to
    :func:`~bastion.data.contracts.infer_contract` (``immutable``, ``one_hot``, ``costs``).
    """
    from sklearn.datasets import make_classification

    rng = np.random.default_rng(seed)
    X, y = make_classification(
        n_samples=n_samples, n_features=5, n_informative=4, n_redundant=1, random_state=seed
    )
    age = np.clip(np.round(45 + 12 * X[:, 0] + rng.normal(0, 8, n_samples)), 18, 90)
    accounts = np.clip(np.round(4 + 2 * X[:, 1] + rng.normal(0, 1.5, n_samples)), 0, 12)
    region = rng.integers(0, 4, n_samples)
    channel = np.where(
        y == 1, rng.choice(3, n_samples, p=[0.6, 0.2, 0.2]), rng.integers(0, 3, n_samples)
    )
    frame = pd.DataFrame({f"f{i}": X[:, i] for i in range(5)})
    frame["age"] = age.astype(np.int64)
    frame["n_accounts"] = accounts.astype(np.int64)
    frame["region"] = region.astype(np.int64)
    for k, name in enumerate(("web", "branch", "phone")):
        frame[f"channel_{name}"] = (channel == k).astype(np.int64)
    frame["customer_id"] = np.arange(100_000, 100_000 + n_samples, dtype=np.int64)
    rules: dict[str, Any] = {
        "immutable": ["customer_id"],
        "one_hot": {"channel": ["channel_web", "channel_branch", "channel_phone"]},
        "categorical": ["region"],
        "costs": {},
    }
    return frame, y.astype(np.int64), rules
