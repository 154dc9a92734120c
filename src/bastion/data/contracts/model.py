"""Value objects of data contracts: contracts, violations and validation reports.

A contract is what a batch of data must look like. A :class:`TableContract` holds one
:class:`ColumnSpec` per column (kind, range, categories, missing values, uniqueness); a
:class:`TensorContract` holds the shape, dtype, value range and per-channel statistics of
an array of samples. Both carry a compact :class:`Reference` (CDF sketches, category counts,
outlier model) so distribution checks can run later without the reference data.

Validation returns a :class:`ValidationReport` with every :class:`Violation` at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from bastion.errors import DataContractError

__all__ = [
    "COLUMN_KINDS",
    "ColumnSpec",
    "Contract",
    "ContractFailed",
    "DriftTest",
    "DuplicateGroup",
    "MahalanobisModel",
    "Outlier",
    "Reference",
    "Sketch",
    "TableContract",
    "TensorContract",
    "ValidationReport",
    "Violation",
]

#: the kinds of column a table contract knows
COLUMN_KINDS = ("float", "integer", "boolean", "categorical", "string", "datetime")
ColumnKind = Literal["float", "integer", "boolean", "categorical", "string", "datetime"]
Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Sketch:
    """A reference CDF: exact (a step function over ``values``) or piecewise linear."""

    values: tuple[float, ...]
    cdf: tuple[float, ...]
    exact: bool


@dataclass(frozen=True)
class MahalanobisModel:
    """Mean and precision of per-sample features; a distance over ``threshold`` is an outlier."""

    mean: tuple[float, ...]
    precision: tuple[tuple[float, ...], ...]
    threshold: float


@dataclass(frozen=True)
class Reference:
    """What the contract remembers of its reference data, for distribution checks.

    ``sketches`` maps a numeric column (or a tensor feature) to its CDF sketch, ``counts``
    a categorical column to its category counts, ``missing`` a column to its missing rate.
    """

    n: int
    sketches: dict[str, Sketch] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    missing: dict[str, float] = field(default_factory=dict)
    mahalanobis: MahalanobisModel | None = None


@dataclass(frozen=True)
class ColumnSpec:
    """The rules for one column of a table.

    ``min``/``max`` are the observed bounds (ISO strings for datetimes). A value may lie up
    to ``slack = [below, above]`` beyond them; without ``slack``, up to the contract's
    ``range_tolerance`` times ``max - min``. Inference sets the slack of a numeric column to
    exactly that widening (plus what rounding ``min``/``max`` needs), except that a column
    never seen negative is not widened below zero: an ``age`` seen from 18 to 89 accepts
    10.9 to 96.1 with the default tolerance 0.1;
    ``categories`` lists the allowed values of a
    categorical or boolean column; ``pattern`` is an optional regular expression every string
    value must match in full; ``drift`` turns the column's distribution check on or off.
    Robust statistics (``median``, ``mad``) feed the outlier check.

    Rules for attacks on tabular models (:mod:`bastion.data.tabular`): ``immutable`` columns
    (an id, a birth date) are never perturbed; ``cost`` weighs a unit change of the column
    in perturbation distances (default 1); ``one_hot`` names the one-hot group the column
    belongs to (exactly one column of a group is 1, the others 0).
    """

    name: str
    kind: ColumnKind
    dtype: str = ""
    nullable: bool = False
    max_missing: float | None = None
    min: float | str | None = None
    max: float | str | None = None
    slack: tuple[float, float] | None = None
    categories: tuple[Any, ...] | None = None
    unique: bool = False
    pattern: str | None = None
    mean: float | None = None
    std: float | None = None
    median: float | None = None
    mad: float | None = None
    drift: bool = True
    immutable: bool = False
    cost: float | None = None
    one_hot: str | None = None


@dataclass(frozen=True)
class TableContract:
    """A contract for a table (pandas data frame, CSV or Parquet file)."""

    name: str
    columns: tuple[ColumnSpec, ...]
    reference: Reference
    version: int = 1
    range_tolerance: float = 0.1
    allow_extra_columns: bool = False
    allow_duplicates: bool = True
    near_duplicate_tolerance: float = 0.01
    outlier_z: float = 3.5
    kind: Literal["table"] = "table"

    def column(self, name: str) -> ColumnSpec:
        for c in self.columns:
            if c.name == name:
                return c
        raise DataContractError(f"contract {self.name!r} has no column {name!r}")


@dataclass(frozen=True)
class TensorContract:
    """A contract for an array of samples: ``shape`` has ``None`` for the batch axis.

    ``channels`` holds per-channel ``mean``/``std``/``min``/``max`` of the reference;
    ``channel_axis`` is ``None`` when the samples have no channel axis.
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: str
    min: float
    max: float
    reference: Reference
    channel_axis: int | None = None
    channels: tuple[dict[str, float], ...] = ()
    allow_nan: bool = False
    version: int = 1
    range_tolerance: float = 0.1
    allow_duplicates: bool = True
    near_duplicate_tolerance: float = 0.01
    kind: Literal["tensor"] = "tensor"


Contract = TableContract | TensorContract


@dataclass(frozen=True)
class Violation:
    """One broken rule: where (``row``, ``column`` or element ``index``), the value, the rule.

    ``severity`` is ``error`` for a rule the contract enforces and ``warning`` for a finding
    to look at (an outlier, a near-duplicate, a population-stability warning).
    """

    rule: str
    message: str
    row: int | None = None
    column: str | None = None
    index: tuple[int, ...] | None = None
    value: Any = None
    expected: Any = None
    severity: Severity = "error"

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "severity": self.severity,
            "row": self.row,
            "column": self.column,
            "index": list(self.index) if self.index is not None else None,
            "value": _jsonable(self.value),
            "expected": _jsonable(self.expected),
            "message": self.message,
        }


@dataclass(frozen=True)
class DriftTest:
    """A distribution test of one column or feature against the reference."""

    column: str
    test: Literal["ks", "chi2", "binomial"]
    statistic: float
    p_value: float
    q_value: float
    psi: float | None
    drifted: bool

    def to_dict(self) -> dict[str, Any]:
        return {k: _jsonable(v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class DuplicateGroup:
    """Rows (or samples) that are identical (``exact``) or within tolerance of the first."""

    rows: tuple[int, ...]
    exact: bool
    distance: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"rows": list(self.rows), "exact": self.exact, "distance": _jsonable(self.distance)}


@dataclass(frozen=True)
class Outlier:
    """A value (``column`` set) or a whole sample (``column`` None) far from the reference."""

    row: int
    score: float
    method: Literal["robust_z", "mahalanobis"]
    column: str | None = None
    value: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {k: _jsonable(v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class ValidationReport:
    """Everything validation found; ``ok`` when no error-severity violation was found."""

    contract: str
    kind: Literal["table", "tensor"]
    n_rows: int
    violations: tuple[Violation, ...]
    drift: tuple[DriftTest, ...] = ()
    duplicates: tuple[DuplicateGroup, ...] = ()
    outliers: tuple[Outlier, ...] = ()
    fdr: float = 0.05

    @property
    def errors(self) -> tuple[Violation, ...]:
        return tuple(v for v in self.violations if v.severity == "error")

    @property
    def warnings(self) -> tuple[Violation, ...]:
        return tuple(v for v in self.violations if v.severity == "warning")

    @property
    def ok(self) -> bool:
        return not self.errors

    def rules(self) -> set[str]:
        """The rules broken at error severity."""
        return {v.rule for v in self.errors}

    def summary(self) -> str:
        if self.ok:
            return (f"{self.contract}: {self.n_rows} rows pass "
                    f"({len(self.warnings)} warnings)")
        counts: dict[str, int] = {}
        for v in self.errors:
            counts[v.rule] = counts.get(v.rule, 0) + 1
        parts = ", ".join(f"{k}: {n}" for k, n in sorted(counts.items()))
        return f"{self.contract}: {len(self.errors)} violations in {self.n_rows} rows ({parts})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "contract": self.contract,
            "kind": self.kind,
            "ok": self.ok,
            "n_rows": self.n_rows,
            "n_errors": len(self.errors),
            "n_warnings": len(self.warnings),
            "fdr": self.fdr,
            "violations": [v.to_dict() for v in self.violations],
            "drift": [d.to_dict() for d in self.drift],
            "duplicates": [d.to_dict() for d in self.duplicates],
            "outliers": [o.to_dict() for o in self.outliers],
        }


class ContractFailed(DataContractError):
    """Raised by ``validate(..., strict=True)``; the full report is in ``report``."""

    def __init__(self, report: ValidationReport) -> None:
        first = "; ".join(v.message for v in report.errors[:5])
        more = f" (and {len(report.errors) - 5} more)" if len(report.errors) > 5 else ""
        super().__init__(f"{report.summary()}: {first}{more}")
        self.report = report


def _jsonable(value: Any) -> Any:
    """A JSON-safe form of a value: numpy scalars to Python, NaN/inf to strings."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return _jsonable(item())
        except (ValueError, TypeError):
            pass
    return str(value)
