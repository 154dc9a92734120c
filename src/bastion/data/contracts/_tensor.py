"""Tensor contracts: inference and validation of arrays of samples.

Distribution checks on tensors use per-sample summary features (per-channel mean and standard
deviation and the means of up to 16 contiguous blocks of each channel), which are independent
across samples, unlike single pixels. The same features feed a Mahalanobis outlier model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bastion.data.contracts._dupes import exact_groups, near_groups, row_codes
from bastion.data.contracts._stats import drift_tests, ks_test, make_sketch, psi_numeric, sig
from bastion.data.contracts.model import (
    DriftTest,
    DuplicateGroup,
    MahalanobisModel,
    Outlier,
    Reference,
    Severity,
    TensorContract,
    Violation,
)
from bastion.errors import InputError

__all__ = ["PSI_ALERT", "PSI_MIN_ROWS", "infer_tensor", "sample_features", "validate_tensor"]

#: population stability index at or above which a warning is raised
PSI_ALERT = 0.25
#: PSI is only trusted (warned on) for batches of at least this many samples
PSI_MIN_ROWS = 100
_MAX_FEATURES = 64
_VALUES_SAMPLE = 200_000
_OUTLIER_QUANTILE = 0.999


def _default_channel_axis(ndim: int) -> int | None:
    return 1 if ndim == 4 else None


def sample_features(x: np.ndarray, channel_axis: int | None) -> tuple[np.ndarray, list[str]]:
    """Per-sample features ``(n, k)`` and their names, from samples ``x`` (float)."""
    n = x.shape[0]
    if channel_axis is None:
        xc = x.reshape(n, 1, -1)
    else:
        xc = np.moveaxis(x, channel_axis, 1).reshape(n, x.shape[channel_axis], -1)
    n_ch, length = xc.shape[1], xc.shape[2]
    blocks = min(16, length, max(0, _MAX_FEATURES // n_ch - 2))
    feats: list[np.ndarray] = []
    names: list[str] = []
    for c in range(n_ch):
        v = xc[:, c, :]
        feats += [v.mean(axis=1), v.std(axis=1)]
        names += [f"ch{c}.mean", f"ch{c}.std"]
        if blocks > 1:
            edges = np.linspace(0, length, blocks + 1).astype(int)
            sums = np.add.reduceat(v, edges[:-1], axis=1) / np.diff(edges)
            feats += list(sums.T)
            names += [f"ch{c}.block{j}" for j in range(blocks)]
    return np.stack(feats, axis=1), names


def _mahalanobis(f: np.ndarray, model: MahalanobisModel) -> np.ndarray:
    diff = f - np.asarray(model.mean)
    d2 = np.einsum("ij,jk,ik->i", diff, np.asarray(model.precision), diff)
    return np.sqrt(np.maximum(d2, 0.0))


def _fit_mahalanobis(f: np.ndarray) -> MahalanobisModel | None:
    n, k = f.shape
    if n <= k + 1:
        return None
    mean = f.mean(axis=0)
    cov = np.cov(f, rowvar=False).reshape(k, k)
    ridge = 1e-9 + 1e-3 * float(np.mean(np.diag(cov)))
    precision = np.linalg.inv(cov + ridge * np.eye(k))
    model = MahalanobisModel(
        mean=tuple(sig(v) for v in mean),
        precision=tuple(tuple(sig(v) for v in row) for row in precision),
        threshold=0.0,
    )
    dist = _mahalanobis(f, model)
    return MahalanobisModel(mean=model.mean, precision=model.precision,
                            threshold=sig(float(np.quantile(dist, _OUTLIER_QUANTILE))))


def infer_tensor(arr: np.ndarray, *, name: str, reference_sample: int, range_tolerance: float,
                 seed: int) -> TensorContract:
    if arr.ndim < 2 or arr.shape[0] < 2:
        raise InputError(f"a tensor contract needs at least 2 samples along axis 0, got shape "
                         f"{arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise InputError(f"a tensor contract needs numeric data, got dtype {arr.dtype}")
    rng = np.random.default_rng(seed)
    if arr.shape[0] > reference_sample:
        arr = arr[np.sort(rng.choice(arr.shape[0], size=reference_sample, replace=False))]
    x = arr.astype(np.float64)
    n = x.shape[0]
    flat = x.reshape(n, -1)
    finite_rows = np.isfinite(flat).all(axis=1)
    values = flat[np.isfinite(flat)]
    if values.size == 0:
        raise InputError("the reference tensor has no finite value")
    channel_axis = _default_channel_axis(x.ndim)
    channels: list[dict[str, float]] = []
    if channel_axis is not None:
        for c in range(x.shape[channel_axis]):
            v = np.take(x, c, axis=channel_axis)
            v = v[np.isfinite(v)]
            channels.append({"mean": sig(v.mean()), "std": sig(v.std()), "min": sig(v.min()),
                             "max": sig(v.max())})
    feats, names = sample_features(x[finite_rows], channel_axis)
    sketches = {}
    for j, fname in enumerate(names):
        sk = make_sketch(feats[:, j])
        if sk is not None:
            sketches[fname] = sk
    pooled = values if values.size <= _VALUES_SAMPLE else rng.choice(values, _VALUES_SAMPLE)
    pooled_sketch = make_sketch(pooled)
    if pooled_sketch is not None:
        sketches["values"] = pooled_sketch
    return TensorContract(
        name=name,
        shape=(None, *arr.shape[1:]),
        dtype=str(arr.dtype),
        min=sig(values.min()),
        max=sig(values.max()),
        channel_axis=channel_axis,
        channels=tuple(channels),
        allow_nan=not bool(finite_rows.all()),
        range_tolerance=range_tolerance,
        reference=Reference(n=int(finite_rows.sum()), sketches=sketches,
                            mahalanobis=_fit_mahalanobis(feats)),
    )


Parts = tuple[list[Violation], tuple[DriftTest, ...], list[DuplicateGroup], list[Outlier]]


def _check_shape(arr: np.ndarray, contract: TensorContract) -> tuple[np.ndarray, Violation | None]:
    item = contract.shape[1:]
    if arr.ndim == len(item) and all(e is None or e == a for e, a in zip(item, arr.shape,
                                                                         strict=True)):
        arr = arr[None]  # one sample without its batch axis
    ok = arr.ndim == len(contract.shape) and all(
        e is None or e == a for e, a in zip(contract.shape, arr.shape, strict=True))
    if ok:
        return arr, None
    expected = ["n" if s is None else s for s in contract.shape]
    return arr, Violation(rule="shape", value=list(arr.shape), expected=expected,
                          message=f"shape {tuple(arr.shape)} does not match {tuple(expected)}")


def validate_tensor(arr: Any, contract: TensorContract, *, distribution: bool, fdr: float,
                    min_drift_rows: int) -> tuple[int, Parts]:
    """The number of samples and the findings of ``arr`` against ``contract``."""
    arr = np.asarray(arr)
    out: list[Violation] = []
    if str(arr.dtype) != contract.dtype:
        out.append(Violation(rule="dtype", value=str(arr.dtype), expected=contract.dtype,
                             message=f"dtype {arr.dtype} is not {contract.dtype}"))
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        return (arr.shape[0] if arr.ndim else 0), (out, (), [], [])
    arr, shape_violation = _check_shape(arr, contract)
    if shape_violation is not None:
        out.append(shape_violation)
        return (arr.shape[0] if arr.ndim else 0), (out, (), [], [])
    n = arr.shape[0]
    if n == 0:
        return 0, (out, (), [], [])
    x = arr.astype(np.float64, copy=False)
    flat = x.reshape(n, -1)
    nan = np.isnan(flat)
    if not contract.allow_nan:
        for i in np.flatnonzero(nan.any(axis=1)):
            where = tuple(int(p) for p in np.unravel_index(int(np.argmax(nan[i])), arr.shape[1:]))
            out.append(Violation(rule="nan", row=int(i), index=where, value="nan",
                                 expected="a number", message=f"sample {i} has NaN at {where}"))
    span = contract.max - contract.min
    lo = contract.min - contract.range_tolerance * span
    hi = contract.max + contract.range_tolerance * span
    with np.errstate(invalid="ignore"):
        excess = np.where(flat < lo, lo - flat, np.where(flat > hi, flat - hi, 0.0))
    excess = np.nan_to_num(excess, nan=0.0, posinf=np.inf)
    for i in np.flatnonzero((excess > 0).any(axis=1)):
        j = int(np.argmax(excess[i]))
        pos: tuple[int, ...] = tuple(int(p) for p in np.unravel_index(j, arr.shape[1:]))
        value = float(flat[i, j])
        out.append(Violation(
            rule="range", row=int(i), index=pos, value=value, expected=[sig(lo), sig(hi)],
            message=f"sample {i} has {value:.6g} at {pos}, outside [{lo:.6g}, {hi:.6g}]"))
    codes = row_codes(arr)
    dups = exact_groups(codes)
    for g in dups:
        sev: Severity = "warning" if contract.allow_duplicates else "error"
        out.append(Violation(rule="duplicate", row=g.rows[1], value=list(g.rows), severity=sev,
                             message=f"samples {list(g.rows)} are identical"))
    scale = span if span > 0 else 1.0
    near = near_groups((flat - contract.min) / scale, codes, contract.near_duplicate_tolerance)
    for g in near:
        out.append(Violation(rule="near_duplicate", row=g.rows[1], value=list(g.rows),
                             severity="warning", message=f"samples {list(g.rows)} are within "
                             f"{g.distance:.3g} (RMS, range-scaled) of each other"))
    finite = np.isfinite(flat).all(axis=1)
    rows = np.flatnonzero(finite)
    outliers: list[Outlier] = []
    drift: tuple[DriftTest, ...] = ()
    if rows.size:
        feats, names = sample_features(x[rows], contract.channel_axis)
        model = contract.reference.mahalanobis
        if model is not None and len(model.mean) == feats.shape[1]:
            dist = _mahalanobis(feats, model)
            for r, d in zip(rows[dist > model.threshold], dist[dist > model.threshold],
                            strict=True):
                outliers.append(Outlier(row=int(r), score=sig(d), method="mahalanobis"))
                out.append(Violation(rule="outlier", row=int(r), value=sig(d),
                                     expected=f"<= {model.threshold}", severity="warning",
                                     message=f"sample {r} is far from the reference "
                                     f"(Mahalanobis {d:.3g} > {model.threshold:.3g})"))
        if distribution and rows.size >= min_drift_rows:
            drift = _tensor_drift(feats, names, flat[rows], contract, fdr, out)
    return n, (out, drift, [*dups, *near], outliers)


def _tensor_drift(feats: np.ndarray, names: list[str], values: np.ndarray,
                  contract: TensorContract, fdr: float, out: list[Violation]
                  ) -> tuple[DriftTest, ...]:
    ref = contract.reference
    raw: list[tuple[str, str, float, float, float | None]] = []
    for j, fname in enumerate(names):
        sk = ref.sketches.get(fname)
        if sk is None:
            continue
        d, p = ks_test(sk, ref.n, feats[:, j])
        raw.append((fname, "ks", d, p, psi_numeric(sk, feats[:, j])))
    tests = drift_tests(raw, fdr)
    for t in tests:
        if t.drifted:
            out.append(Violation(rule="drift", column=t.column, value=t.statistic,
                                 expected=f"q > {fdr}", message=f"feature {t.column} drifted "
                                 f"(KS {t.statistic:.3g}, q={t.q_value:.3g})"))
    pooled = ref.sketches.get("values")
    if pooled is not None and feats.shape[0] >= PSI_MIN_ROWS:
        psi = psi_numeric(pooled, values.ravel())
        if psi is not None and psi >= PSI_ALERT:
            out.append(Violation(rule="psi", column="values", value=sig(psi),
                                 expected=f"< {PSI_ALERT}", severity="warning",
                                 message=f"value distribution shifted (PSI {psi:.3g})"))
    return tests
