"""A fast L∞ attack for large tree ensembles: a search over cells (leaf tuples) within the rules.

After Zhang, Zhang and Hsieh, "An efficient adversarial attack for tree ensembles" (NeurIPS
2020): an ensemble is constant on the cells of the grid its thresholds cut, so the search moves
between neighbouring cells (a leaf tuple changes when one feature crosses one threshold) instead
of following gradients the model does not have. This implementation:

1. lists, per feature, the cells its thresholds cut and the nearest value the schema allows in
   each (:func:`~bastion.attacks.trees._milp.feature_cells`: ranges, integers, category
   codes, immutable features), with its cost-weighted distance from the original value;
2. searches a box of radius ``r`` by steepest ascent on the adversarial margin
   (``max_{c != y} score_c - score_y``) over single-feature cell changes that stay in the box,
   from the original row and from the last adversarial point;
3. shrinks ``r`` by bisection over the distinct cell distances (the only radii where the
   reachable cells change) and keeps the closest adversarial row found.

It never proves anything: its distances are upper bounds on the exact minimum
(:mod:`bastion.attacks.trees.exact`), which the benchmark compares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from bastion.attacks.evasion.base import EvasionAttack
from bastion.attacks.trees._milp import feature_cells, tree_structure
from bastion.data.tabular import FeatureSchema
from bastion.errors import ConfigurationError, InputError
from bastion.models.base import Capability, Classifier
from bastion.models.trees import TreeEnsemble
from bastion.threat import Norm

__all__ = ["FastTreeAttack", "FastTreeResult", "fast_tree_attack"]


@dataclass(frozen=True)
class FastTreeResult:
    """Per row: ``found`` an adversarial row, its cost-weighted L∞ ``distance`` and ``x_adv``."""

    found: np.ndarray
    distance: np.ndarray
    x_adv: np.ndarray
    evaluations: int


class _Row:
    """The candidate cells of one row, per coordinate (a feature or a one-hot group)."""

    def __init__(self, ens: TreeEnsemble, schema: FeatureSchema, x0: np.ndarray) -> None:
        self.coords: list[tuple[list[int], np.ndarray, np.ndarray]] = []  # cols, values, dist
        grouped = schema.grouped()
        for i in range(ens.n_features):
            if grouped[i] or schema.immutable[i]:
                continue
            t = ens.thresholds(i)
            if t.size == 0:
                continue
            feasible, _, witness, _ = feature_cells(ens, schema, i, float(x0[i]), t)
            vals = witness[feasible]
            dist = np.abs(vals - x0[i]) * schema.cost[i]
            self.coords.append(([i], vals[:, None], dist))
        for g in schema.groups:
            cols = list(g)
            if np.any(schema.immutable[cols]):
                continue
            eye = np.eye(len(cols))
            dist = np.abs(eye - x0[cols]).max(axis=1) * schema.cost[cols].max()
            self.coords.append((cols, eye, dist))
        self.radii = np.unique(np.concatenate([d for _, _, d in self.coords] + [np.zeros(1)]))
        # Single-column moves as one flat table (vectorised candidate batches).
        single = [(c[0], v[:, 0], d) for c, v, d in self.coords if len(c) == 1]
        self.col = np.concatenate([np.full(d.size, c) for c, _, d in single] or [np.zeros(0, int)])
        self.val = np.concatenate([v for _, v, _ in single] or [np.zeros(0)])
        self.dist = np.concatenate([d for _, _, d in single] or [np.zeros(0)])
        self.groups = [(c, v, d) for c, v, d in self.coords if len(c) > 1]


def _margin(ens: TreeEnsemble, rows: np.ndarray, y: int) -> np.ndarray:
    s = ens.class_scores(rows)
    other = np.delete(s, y, axis=1).max(axis=1)
    return np.asarray(other - s[:, y])


def _box_search(
    ens: TreeEnsemble,
    row: _Row,
    x0: np.ndarray,
    y: int,
    r: float,
    start: np.ndarray,
    max_steps: int,
) -> tuple[np.ndarray | None, int]:
    """Steepest ascent on the margin over single-coordinate cell moves inside the box."""
    x = start.copy()
    cur = float(_margin(ens, x[None], y)[0])
    evals = 1
    if ens.predict(x[None])[0] != y:
        return x, evals
    for _ in range(max_steps):
        ok = np.flatnonzero(row.dist <= r)
        cands = [np.repeat(x[None], ok.size, axis=0)]
        cands[0][np.arange(ok.size), row.col[ok]] = row.val[ok]
        for cols, vals, dist in row.groups:
            sel = dist <= r
            block = np.repeat(x[None], int(sel.sum()), axis=0)
            block[:, cols] = vals[sel]
            cands.append(block)
        if sum(c.shape[0] for c in cands) == 0:
            return None, evals
        batch = np.concatenate(cands)
        m = _margin(ens, batch, y)
        evals += batch.shape[0]
        adv = np.flatnonzero(ens.predict(batch) != y) if m.max() >= 0 else np.array([], int)
        if adv.size:
            # Of the adversarial moves, the one closest to the original row.
            d = np.abs(batch[adv] - x0).max(axis=1)
            return batch[adv[np.argmin(d)]], evals
        best = int(np.argmax(m))
        if m[best] <= cur + 1e-12:
            return None, evals
        x, cur = batch[best], float(m[best])
    return None, evals


def _weighted_linf(schema: FeatureSchema, x: np.ndarray, x0: np.ndarray) -> float:
    return float(schema.distance(x[None], x0[None], "linf")[0])


def _clip_to_box(row: _Row, x: np.ndarray, x0: np.ndarray, r: float) -> np.ndarray:
    """``x`` with every coordinate moved to its nearest allowed cell value inside the box."""
    out = x0.copy()
    for cols, vals, dist in row.coords:
        ok = np.flatnonzero(dist <= r)
        near = ok[np.argmin(np.abs(vals[ok] - x[cols]).max(axis=1))]
        out[cols] = vals[near]
    return out


def fast_tree_attack(
    ensemble: TreeEnsemble,
    x: Any,
    y: Any,
    *,
    schema: FeatureSchema | None = None,
    max_steps: int = 100,
) -> FastTreeResult:
    """The cell-search attack (module docstring) on each row; L∞, cost-weighted by the schema."""
    X = np.asarray(x, dtype=np.float64)
    labels = np.asarray(y, dtype=np.int64).reshape(-1)
    if X.ndim != 2 or X.shape[1] != ensemble.n_features or labels.shape[0] != X.shape[0]:
        raise InputError(
            f"x must have shape (n, {ensemble.n_features}) with one label per row, got "
            f"{X.shape} and {labels.shape[0]} labels"
        )
    if max_steps < 1:
        raise ConfigurationError(f"max_steps must be >= 1, got {max_steps}")
    schema = schema or FeatureSchema.unconstrained(ensemble.n_features)
    found = np.zeros(X.shape[0], dtype=bool)
    dist = np.full(X.shape[0], np.inf)
    out = X.copy()
    evals = 0
    for n in range(X.shape[0]):
        x0, label = X[n], int(labels[n])
        if ensemble.predict(x0[None])[0] != label:
            found[n], dist[n] = True, 0.0
            continue
        row = _Row(ensemble, schema, x0)
        radii = row.radii
        best, e = _box_search(ensemble, row, x0, label, float(radii[-1]), x0, max_steps)
        evals += e
        if best is None:
            continue
        best_d = _weighted_linf(schema, best, x0)
        lo, hi = 0, int(np.searchsorted(radii, best_d, side="left"))
        while lo < hi:
            mid = (lo + hi) // 2
            r = float(radii[mid])
            cand, e1 = _box_search(ensemble, row, x0, label, r, x0, max_steps)
            if cand is None:
                cand, e2 = _box_search(
                    ensemble, row, x0, label, r, _clip_to_box(row, best, x0, r), max_steps
                )
                e1 += e2
            evals += e1
            if cand is not None and _weighted_linf(schema, cand, x0) < best_d:
                best, best_d = cand, _weighted_linf(schema, cand, x0)
                hi = int(np.searchsorted(radii, best_d, side="left"))
            else:
                lo = mid + 1
        found[n], dist[n], out[n] = True, best_d, best
    return FastTreeResult(found=found, distance=dist, x_adv=out, evaluations=evals)


class FastTreeAttack(EvasionAttack):
    """:func:`fast_tree_attack` as an evasion attack (L∞; needs a TreeClassifier).

    ``extra["tree_distances"]`` holds the cost-weighted L∞ distances (``None``: nothing found).
    """

    name: ClassVar[str] = "tree-fast"
    requires: ClassVar[Capability] = Capability.SCORES
    norms: ClassVar[tuple[Norm, ...]] = (Norm.LINF,)
    minimum_norm: ClassVar[bool] = True
    supports_targeted: ClassVar[bool] = False

    def __init__(
        self,
        *,
        norm: str | Norm = "linf",
        eps: float | None = None,
        max_steps: int = 100,
        batch_size: int = 256,
        seed: int | None = 0,
    ) -> None:
        super().__init__(norm=norm, eps=eps, batch_size=batch_size, seed=seed)
        if not isinstance(max_steps, int) or max_steps < 1:
            raise ConfigurationError(f"max_steps must be a positive integer, got {max_steps!r}")
        self.max_steps = max_steps

    def _reset(self) -> None:
        self._distances: list[float] = []

    def _run(
        self,
        classifier: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        ensemble = tree_structure(classifier, self)
        res = fast_tree_attack(
            ensemble,
            x.detach().cpu().double().numpy(),
            y.cpu().numpy(),
            schema=getattr(self, "_constraints", None),
            max_steps=self.max_steps,
        )
        self._distances.extend(float(d) for d in res.distance)
        return torch.as_tensor(res.x_adv, dtype=x.dtype, device=x.device)

    def _result_extra(self) -> dict[str, Any]:
        return {"tree_distances": [d if math.isfinite(d) else None for d in self._distances]}
