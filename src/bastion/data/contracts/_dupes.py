"""Exact and near-duplicate rows: hashing, then a distance threshold on small batches."""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from bastion.data.contracts.model import DuplicateGroup

__all__ = ["NEAR_MAX_ROWS", "exact_groups", "near_groups", "row_codes"]

#: batches up to this size get pairwise distances; larger ones quantised hashing
NEAR_MAX_ROWS = 2000
_FAR = 1e6  # stands in for NaN and infinities, so such rows stay comparable


def row_codes(matrix: np.ndarray) -> np.ndarray:
    """One integer per row, equal exactly when the rows' bytes are equal."""
    n = matrix.shape[0]
    flat = np.ascontiguousarray(matrix.reshape(n, int(np.prod(matrix.shape[1:]))))
    if flat.shape[1] == 0:
        return np.zeros(n, dtype=np.int64)
    void = flat.view(np.dtype((np.void, flat.dtype.itemsize * flat.shape[1]))).ravel()
    _, inverse = np.unique(void, return_inverse=True)
    return np.asarray(inverse, dtype=np.int64).ravel()


def exact_groups(codes: np.ndarray) -> list[DuplicateGroup]:
    """Groups of two or more rows with the same code, each sorted, by first row."""
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    groups: list[DuplicateGroup] = []
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    ends = np.r_[starts[1:], codes.size]
    for s, e in zip(starts, ends, strict=True):
        if e - s > 1:
            groups.append(DuplicateGroup(rows=tuple(sorted(int(i) for i in order[s:e])),
                                         exact=True))
    return sorted(groups, key=lambda g: g.rows[0])


def near_groups(features: np.ndarray, codes: np.ndarray, tol: float) -> list[DuplicateGroup]:
    """Rows whose root-mean-square distance is at most ``tol`` but are not exact duplicates.

    ``features`` should be scaled so that ``tol`` is meaningful (standardised columns, or
    values divided by their range). Up to :data:`NEAR_MAX_ROWS` rows every pair is compared;
    beyond, rows are snapped to a grid of step ``tol`` and equal cells are grouped.
    """
    n = features.shape[0]
    if n < 2 or tol <= 0:
        return []
    f = np.asarray(features, dtype=np.float64).reshape(n, -1)
    f = np.clip(np.nan_to_num(f, nan=-_FAR, posinf=_FAR, neginf=-_FAR), -_FAR, _FAR)
    d = max(f.shape[1], 1)
    if n > NEAR_MAX_ROWS:
        cells = row_codes(np.floor(f / tol).astype(np.int64))
        out = []
        for g in exact_groups(cells):
            if len({int(codes[i]) for i in g.rows}) > 1:
                out.append(DuplicateGroup(rows=g.rows, exact=False, distance=tol))
        return out
    sq = np.einsum("ij,ij->i", f, f)
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    dists: list[np.ndarray] = []
    limit = tol * tol * d
    for start in range(0, n, 512):
        block = f[start:start + 512]
        d2 = sq[start:start + 512, None] + sq[None, :] - 2.0 * block @ f.T
        i, j = np.nonzero(d2 <= limit)
        i = i + start
        keep = (j > i) & (codes[i] != codes[j])
        rows.append(i[keep])
        cols.append(j[keep])
        dists.append(np.sqrt(np.maximum(d2[i[keep] - start, j[keep]], 0.0) / d))
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    if r.size == 0:
        return []
    dist = np.concatenate(dists)
    graph = coo_matrix((np.ones(r.size), (r, c)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    out = []
    for lab in np.unique(labels[r]):
        members = np.flatnonzero(labels == lab)
        in_group = labels[r] == lab
        out.append(DuplicateGroup(rows=tuple(int(m) for m in members), exact=False,
                                  distance=float(np.max(dist[in_group]))))
    return sorted(out, key=lambda g: g.rows[0])
