"""Validate a batch against a contract and return every violation at once."""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
from pandas.api import types as ptypes
from scipy import stats

from bastion.data.contracts._common import cat_key, parse_dates, prepare, py, to_seconds
from bastion.data.contracts._dupes import exact_groups, near_groups
from bastion.data.contracts._stats import (
    chi2_test,
    drift_tests,
    ks_test,
    psi_categorical,
    psi_numeric,
    sig,
    sketch_quantile,
)
from bastion.data.contracts._tensor import PSI_ALERT, PSI_MIN_ROWS, validate_tensor
from bastion.data.contracts.model import (
    ColumnSpec,
    Contract,
    ContractFailed,
    DuplicateGroup,
    Outlier,
    Severity,
    TableContract,
    ValidationReport,
    Violation,
)
from bastion.errors import ConfigurationError, InputError

__all__ = ["validate"]

Raw = list[tuple[str, str, float, float, float | None]]


def validate(
    data: Any,
    contract: Contract,
    *,
    distribution: bool = True,
    fdr: float = 0.05,
    min_drift_rows: int = 20,
    strict: bool = False,
) -> ValidationReport:
    """Check ``data`` against ``contract`` and report every violation.

    Schema rules (columns, dtype or kind, shape, range widened by the contract's
    ``range_tolerance``, NaN and missing values, categories, uniqueness, patterns) give one
    :class:`Violation` per offending row, column or sample. With ``distribution=True`` and at
    least ``min_drift_rows`` rows, each column (or tensor feature) is tested against the
    reference — Kolmogorov–Smirnov for numbers and dates, chi-square for categories, a
    binomial test for missing rates — with Benjamini–Hochberg control of the false discovery
    rate at ``fdr``; the population stability index is reported beside each test. Duplicates,
    near-duplicates and outliers are listed; by default they are warnings, which do not fail
    the report (exact duplicates fail when the contract sets ``allow_duplicates: false``).

    ``strict=True`` raises :class:`ContractFailed` (a ``DataContractError``) when the report
    is not ok; by default the report is returned either way.

    >>> import numpy as np
    >>> from bastion.data.contracts import infer_contract
    >>> c = infer_contract(np.random.default_rng(0).random((50, 4)), name="unit")
    >>> bad = np.full((2, 4), 0.5); bad[1, 2] = 7.0
    >>> [(v.rule, v.row, v.index) for v in validate(bad.astype(np.float32), c).errors]
    [('dtype', None, None), ('range', 1, (2,))]
    """
    if not 0.0 < fdr < 1.0:
        raise ConfigurationError(f"fdr must be in (0, 1), got {fdr}")
    if min_drift_rows < 2:
        raise ConfigurationError(f"min_drift_rows must be >= 2, got {min_drift_rows}")
    frame = prepare(data, "auto" if isinstance(contract, TableContract) else "tensor")
    if isinstance(contract, TableContract):
        if not isinstance(frame, pd.DataFrame):
            if frame.ndim == 1:  # one row
                frame = frame.reshape(1, -1)
            if frame.ndim != 2:
                raise InputError(f"a table contract needs a 2-D array or a data frame, "
                                 f"got shape {frame.shape}")
            names = [c.name for c in contract.columns]
            frame = pd.DataFrame(frame, columns=names[: frame.shape[1]] + [
                f"c{i}" for i in range(len(names), frame.shape[1])])
        n, (violations, drift, dups, outliers) = _validate_table(
            frame, contract, distribution=distribution, fdr=fdr, min_drift_rows=min_drift_rows)
    else:
        n, (violations, drift, dups, outliers) = validate_tensor(
            frame, contract, distribution=distribution, fdr=fdr, min_drift_rows=min_drift_rows)
    report = ValidationReport(contract=contract.name, kind=contract.kind, n_rows=n,
                              violations=tuple(violations), drift=drift, duplicates=tuple(dups),
                              outliers=tuple(outliers), fdr=fdr)
    if strict and not report.ok:
        raise ContractFailed(report)
    return report


def accepted_range(spec: ColumnSpec, tol: float) -> tuple[Any, Any] | None:
    """The values a numeric or datetime column accepts, ``(low, high)``, or ``None``.

    Numbers for numeric columns (rounded to 6 significant digits), ISO strings for datetimes;
    ``None`` for columns without a range (text, categories) or without observed bounds.
    """
    if spec.kind not in ("float", "integer", "datetime") or spec.min is None or spec.max is None:
        return None
    if spec.kind == "datetime":
        lo, hi = _bounds(spec, tol, True)
        return (pd.Timestamp(lo, unit="s").isoformat(), pd.Timestamp(hi, unit="s").isoformat())
    lo, hi = _bounds(spec, tol, False)
    return sig(lo, 6), sig(hi, 6)


def _bounds(spec: ColumnSpec, tol: float, as_seconds: bool) -> tuple[float, float]:
    def conv(v: float | str | None, default: float) -> float:
        if v is None:
            return default
        if as_seconds:
            return float(to_seconds(pd.Series([pd.Timestamp(v)]))[0])
        return float(v)

    lo, hi = conv(spec.min, -math.inf), conv(spec.max, math.inf)
    if spec.slack is not None:
        return lo - spec.slack[0], hi + spec.slack[1]
    if math.isfinite(lo) and math.isfinite(hi):
        lo, hi = lo - tol * (hi - lo), hi + tol * (hi - lo)
    return lo, hi


class _Column:
    """Checks of one column; appends to ``out``, keeps numbers for later checks."""

    def __init__(self, s: pd.Series, spec: ColumnSpec, contract: TableContract,
                 out: list[Violation]) -> None:
        self.s, self.spec, self.c, self.out = s, spec, contract, out
        self.raw = s.to_numpy()
        self.na = np.asarray(pd.isna(self.raw), dtype=bool)
        self.numbers: np.ndarray | None = None  # floats (seconds for dates), NaN where absent
        self.keys: list[str] | None = None      # canonical category keys of present values

    def add(self, rule: str, row: int | None, value: Any, expected: Any, message: str,
            severity: str = "error") -> None:
        self.out.append(Violation(rule=rule, row=row, column=self.spec.name, value=py(value),
                                  expected=expected, message=message,
                                  severity=severity))  # type: ignore[arg-type]

    def _bad_cells(self, parsed_na: np.ndarray, what: str) -> None:
        for i in np.flatnonzero(parsed_na & ~self.na):
            self.add("dtype", int(i), self.raw[i], what,
                     f"row {i}, column {self.spec.name!r}: {self.raw[i]!r} is not {what}")

    def check_kind(self) -> None:
        spec, s = self.spec, self.s
        if spec.kind in ("float", "integer"):
            if ptypes.is_bool_dtype(s.dtype):
                self.add("dtype", None, str(s.dtype), spec.kind,
                         f"column {spec.name!r} is boolean, expected {spec.kind}")
                return
            if ptypes.is_numeric_dtype(s.dtype):
                x = s.to_numpy(dtype=np.float64, na_value=np.nan)
            else:
                x = np.asarray(pd.to_numeric(pd.Series(self.raw, dtype=object), errors="coerce"),
                               dtype=np.float64)
                self._bad_cells(np.isnan(x), "a number")
            if spec.kind == "integer":
                with np.errstate(invalid="ignore"):
                    frac = np.isfinite(x) & (x != np.round(x))
                for i in np.flatnonzero(frac):
                    self.add("dtype", int(i), x[i], "integer",
                             f"row {i}, column {spec.name!r}: {x[i]!r} is not an integer")
            self.numbers = x
            self._check_range(x, as_seconds=False)
        elif spec.kind == "datetime":
            t = parse_dates(s)
            if not ptypes.is_datetime64_any_dtype(s.dtype):
                self._bad_cells(t.isna().to_numpy(), "a date-time")
            secs = to_seconds(t)
            self.numbers = secs
            self._check_range(secs, as_seconds=True)
        elif spec.kind in ("categorical", "boolean"):
            rows_present = np.flatnonzero(~self.na)
            keys = [cat_key(v) for v in self.raw[rows_present]]
            self.keys = keys
            allowed = {cat_key(v) for v in spec.categories or ()}
            if spec.categories is not None:
                shown = sorted(allowed)[:10]
                for i, k in zip(rows_present, keys, strict=True):
                    if k in allowed:
                        continue
                    v = self.raw[i]
                    self.add("category", int(i), v, list(spec.categories),
                             f"row {i}, column {spec.name!r}: {v!r} is not one of "
                             f"{shown}{'…' if len(allowed) > 10 else ''}")
        if spec.pattern is not None:
            rx = re.compile(spec.pattern)
            for i in np.flatnonzero(~self.na):
                v = self.raw[i]
                if rx.fullmatch(str(v)) is None:
                    self.add("pattern", int(i), v, spec.pattern,
                             f"row {i}, column {spec.name!r}: {v!r} does not match "
                             f"{spec.pattern!r}")

    def _check_range(self, x: np.ndarray, *, as_seconds: bool) -> None:
        lo, hi = _bounds(self.spec, self.c.range_tolerance, as_seconds)
        with np.errstate(invalid="ignore"):
            bad = (x < lo) | (x > hi)
        for i in np.flatnonzero(bad):
            shown = self.raw[i] if as_seconds else x[i]
            exp = ([pd.Timestamp(lo, unit="s").isoformat(), pd.Timestamp(hi, unit="s").isoformat()]
                   if as_seconds else [sig(lo), sig(hi)])
            self.add("range", int(i), shown, exp,
                     f"row {i}, column {self.spec.name!r}: {shown} is outside "
                     f"[{exp[0]}, {exp[1]}]")

    def check_missing(self) -> None:
        spec = self.spec
        if not spec.nullable:
            for i in np.flatnonzero(self.na):
                self.add("missing", int(i), None, "a value",
                         f"row {i}, column {spec.name!r} is missing")
        rate = float(self.na.mean()) if self.na.size else 0.0
        if spec.max_missing is not None and rate > spec.max_missing:
            self.add("missing_rate", None, sig(rate), f"<= {spec.max_missing}",
                     f"column {spec.name!r} is {rate:.1%} missing, over {spec.max_missing:.1%}")

    def check_unique(self) -> None:
        if not self.spec.unique:
            return
        rows = np.flatnonzero(~self.na)
        present = pd.Series(self.raw[rows], dtype=object).map(cat_key)
        dup = present.duplicated(keep="first").to_numpy()
        for i in rows[dup]:
            v = self.raw[i]
            self.add("unique", int(i), v, "a unique value",
                     f"row {i}, column {self.spec.name!r}: {v!r} appears more than once")

    def outliers(self) -> list[Outlier]:
        spec, x = self.spec, self.numbers
        if spec.kind not in ("float", "integer") or x is None or not spec.mad or \
                spec.median is None:
            return []
        with np.errstate(invalid="ignore"):
            z = 0.6745 * (x - spec.median) / spec.mad
            far = np.isfinite(z) & (np.abs(z) > self.c.outlier_z)
            sk = self.c.reference.sketches.get(spec.name)
            if sk is not None:  # heavy tails: also beyond the reference's central 99.8%
                lo, hi = sketch_quantile(sk, np.array([0.001, 0.999]))
                far &= (x < lo) | (x > hi)
        found = []
        for i in np.flatnonzero(far):
            found.append(Outlier(row=int(i), score=sig(float(z[i])), method="robust_z",
                                 column=spec.name, value=float(x[i])))
            self.add("outlier", int(i), float(x[i]), f"|robust z| <= {self.c.outlier_z}",
                     f"row {i}, column {spec.name!r}: {x[i]:.6g} is an outlier (robust z "
                     f"{z[i]:.3g})", severity="warning")
        return found

    def drift(self, raw: Raw) -> None:
        spec, ref = self.spec, self.c.reference
        if not spec.drift:
            return
        sk = ref.sketches.get(spec.name)
        if sk is not None and self.numbers is not None:
            x = self.numbers[np.isfinite(self.numbers)]
            if x.size:
                d, p = ks_test(sk, ref.n, x)
                raw.append((spec.name, "ks", d, p, psi_numeric(sk, x)))
        counts = ref.counts.get(spec.name)
        if counts is not None and self.keys is not None:
            batch = dict(Counter(self.keys))
            res = chi2_test(counts, {k: batch.get(k, 0) for k in counts})
            if res is not None:
                raw.append((spec.name, "chi2", res[0], res[1], psi_categorical(counts, batch)))
        rate = ref.missing.get(spec.name, 0.0)
        if 0.0 < rate < 1.0 and self.na.size:
            k = int(self.na.sum())
            res_b = stats.binomtest(k, int(self.na.size), rate)
            raw.append((f"{spec.name}.missing", "binomial", k / self.na.size,
                        float(res_b.pvalue), None))


def _near_features(df: pd.DataFrame, cols: list[_Column]) -> np.ndarray | None:
    parts = []
    for col in cols:
        if col.numbers is not None and col.spec.kind in ("float", "integer"):
            scale = col.spec.std or 1.0
            parts.append(np.nan_to_num(col.numbers / scale, nan=-1e6))
        else:  # other columns must match exactly: a large code makes any difference far
            keys = [cat_key(v) if not m else "" for v, m in zip(col.raw, col.na, strict=True)]
            codes = pd.factorize(np.asarray(keys, dtype=object))[0].astype(np.float64)
            parts.append(codes * 1e6)
    if not any(c.numbers is not None for c in cols):
        return None
    return np.stack(parts, axis=1) if parts else None


def _validate_table(df: pd.DataFrame, contract: TableContract, *, distribution: bool,
                    fdr: float, min_drift_rows: int
                    ) -> tuple[int, tuple[list[Violation], Any, list[DuplicateGroup],
                                          list[Outlier]]]:
    out: list[Violation] = []
    by_name = {str(c): s for c, s in df.items()}
    expected = {c.name for c in contract.columns}
    for spec in contract.columns:
        if spec.name not in by_name:
            out.append(Violation(rule="missing_column", column=spec.name, expected=spec.kind,
                                 message=f"column {spec.name!r} is missing"))
    if not contract.allow_extra_columns:
        for name in by_name:
            if name not in expected:
                out.append(Violation(rule="unexpected_column", column=name,
                                     message=f"column {name!r} is not in the contract"))
    cols = []
    outliers: list[Outlier] = []
    raw: Raw = []
    n = len(df)
    for spec in contract.columns:
        if spec.name not in by_name:
            continue
        col = _Column(by_name[spec.name], spec, contract, out)
        col.check_kind()
        col.check_missing()
        col.check_unique()
        outliers += col.outliers()
        if distribution and n >= min_drift_rows:
            col.drift(raw)
        cols.append(col)
    drift = drift_tests(raw, fdr)
    for t in drift:
        if t.drifted:
            out.append(Violation(rule="drift", column=t.column, value=t.statistic,
                                 expected=f"q > {fdr}", message=f"column {t.column} drifted "
                                 f"({t.test} statistic {t.statistic:.3g}, q={t.q_value:.3g})"))
        if t.psi is not None and t.psi >= PSI_ALERT and n >= PSI_MIN_ROWS:
            out.append(Violation(rule="psi", column=t.column, value=t.psi,
                                 expected=f"< {PSI_ALERT}", severity="warning",
                                 message=f"column {t.column} shifted (PSI {t.psi:.3g})"))
    dups: list[DuplicateGroup] = []
    if cols and n > 1:
        present = df[[c for c in df.columns if str(c) in expected]]
        codes = pd.util.hash_pandas_object(present, index=False).to_numpy().astype(np.int64)
        dups = exact_groups(codes)
        for g in dups:
            sev: Severity = "warning" if contract.allow_duplicates else "error"
            out.append(Violation(rule="duplicate", row=g.rows[1], value=list(g.rows),
                                 severity=sev, message=f"rows {list(g.rows)} are identical"))
        feats = _near_features(df, cols)
        if feats is not None:
            near = near_groups(feats, codes, contract.near_duplicate_tolerance)
            for g in near:
                out.append(Violation(rule="near_duplicate", row=g.rows[1], value=list(g.rows),
                                     severity="warning", message=f"rows {list(g.rows)} are "
                                     f"within {g.distance:.3g} (RMS, in standard deviations)"))
            dups += near
    return n, (out, drift, dups, outliers)
