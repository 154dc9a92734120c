"""A fast L∞ attack for large tree ensembles: a search over cells (leaf tuples) within the rules.

After Zhang, Zhang and Hsieh, "An efficient adversarial attack for tree ensembles" (NeurIPS
2020): an ensemble is constant on the cells of the grid its thresholds cut, so the search moves
between neighbouring cells (a leaf tuple changes when one feature crosses one threshold) instead
of following gradients the model does not have. This implementation:

1. lists, per feature, the cells its thresholds cut and the nearest value the schema allows in
   each (:func:`~bastion.attacks.trees._milp.feature_cells`: ranges, integers, category
   codes, immutable features), with its cost-weighted distance from the original value;
2. searches a box of radius ``r`` by steepest ascent on the adversarial margin
   (``max_{c != y} score_c - score_y``) over single-feature cell changes that stay in the box
   (per feature, the farthest allowed cell on either side; ``thorough`` adds the nearest),
   from the original row and from the last adversarial point;
3. shrinks ``r`` by bisection over the distinct cell distances (the only radii where the
   reachable cells change) and keeps the closest adversarial row found.

Every row of a batch is searched in lock-step: one step scores the candidate moves of all
rows at once, and a candidate re-walks only the trees that split on the feature it changes
(the others keep their leaf), so the cost of a step grows with the moves, not the ensemble.

It never proves anything: its distances are upper bounds on the exact minimum
(:mod:`bastion.attacks.trees.exact`), which the benchmark compares.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from bastion.attacks.evasion.base import EvasionAttack
from bastion.attacks.trees._milp import feature_cells_batch, tree_structure
from bastion.data.tabular import FeatureSchema
from bastion.errors import ConfigurationError, InputError
from bastion.models.base import Capability, Classifier
from bastion.models.trees import TreeEnsemble
from bastion.threat import Norm

__all__ = ["FastTreeAttack", "FastTreeResult", "fast_tree_attack"]

#: the single-feature moves a step tries, per feature: the farthest allowed cells inside the box
#: on either side ("far"), and with ``thorough`` also the nearest on either side of the current
#: cell ("near")
_FAR = ("far",)
_THOROUGH = ("near", "far")


@dataclass(frozen=True)
class FastTreeResult:
    """Per row: ``found`` an adversarial row, its cost-weighted L∞ ``distance`` and ``x_adv``."""

    found: np.ndarray
    distance: np.ndarray
    x_adv: np.ndarray
    evaluations: int


class _Plan:
    """Per ensemble: the trees that split on each feature (CSR), for incremental evaluation."""

    def __init__(self, ens: TreeEnsemble) -> None:
        self.ens = ens
        internal = ~ens.is_leaf()
        sizes = np.diff(np.append(ens.roots, ens.n_nodes))
        tree_of = np.repeat(np.arange(ens.n_trees), sizes)
        pairs = np.unique(np.stack([ens.feature[internal], tree_of[internal]]), axis=1)
        counts = np.bincount(pairs[0], minlength=ens.n_features)
        self.ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.trees = pairs[1].astype(np.int64)  # sorted by feature, then tree
        self.count = counts.astype(np.int64)
        self.leaf_value = ens.scale * ens.value

    def raw(self, leaves: np.ndarray) -> np.ndarray:
        return np.asarray(self.ens.base_score + self.leaf_value[leaves].sum(axis=1))

    def moved(
        self,
        X: np.ndarray,
        leaves: np.ndarray,
        raw: np.ndarray,
        rr: np.ndarray,
        ff: np.ndarray,
        vv: np.ndarray,
    ) -> np.ndarray:
        """Raw scores of rows ``X[rr]`` with feature ``ff`` set to ``vv`` (one candidate each),
        re-walking only the trees that split on ``ff``."""
        ens = self.ens
        cnt = self.count[ff]
        q = np.repeat(np.arange(rr.size), cnt)
        first = np.repeat(np.cumsum(cnt) - cnt, cnt)
        t = self.trees[self.ptr[ff][q] + np.arange(q.size) - first]
        r, f, v = rr[q], ff[q], vv[q]
        node = ens.roots[t]
        for _ in range(ens.depth):
            inner = np.flatnonzero(ens.left[node] != -1)
            if inner.size == 0:
                break
            nd = node[inner]
            feat = ens.feature[nd]
            xv = np.where(feat == f[inner], v[inner], X[r[inner], feat])
            left = ens.goes_left(xv, ens.threshold[nd])
            node[inner] = np.where(left, ens.left[nd], ens.right[nd])
        delta = self.leaf_value[node] - self.leaf_value[leaves[r, t]]
        out = raw[rr].copy()
        for c in range(out.shape[1]):
            out[:, c] += np.bincount(q, weights=delta[:, c], minlength=rr.size)
        return out


def _class_scores(ens: TreeEnsemble, raw: np.ndarray) -> np.ndarray:
    return np.concatenate([np.zeros_like(raw), raw], axis=1) if ens.link == "sigmoid" else raw


def _margin_pred(
    ens: TreeEnsemble, raw: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The adversarial margin (best other class minus the true one) and the prediction."""
    cs = _class_scores(ens, raw)
    own = cs[np.arange(cs.shape[0]), y]
    other = cs.copy()
    other[np.arange(cs.shape[0]), y] = -np.inf
    return other.max(axis=1) - own, cs.argmax(axis=1)


class _Table:
    """Per row of a batch, the reachable cells of every coordinate (after ``feature_cells``):
    single features as one rectangular table (``V``, ``D``: value and cost-weighted distance
    per candidate column, ``inf`` where the rules forbid the cell), one-hot groups apart."""

    def __init__(self, ens: TreeEnsemble, schema: FeatureSchema, X0: np.ndarray) -> None:
        n = X0.shape[0]
        grouped = schema.grouped()
        cols, vals, dists, spans = [], [], [], []
        start = 0
        for i in range(ens.n_features):
            if grouped[i] or schema.immutable[i]:
                continue
            t = ens.thresholds(i)
            if t.size == 0:
                continue
            feasible, _, witness, _ = feature_cells_batch(ens, schema, i, X0[:, i], t)
            dist = np.abs(witness - X0[:, [i]]) * schema.cost[i]
            cols.append(np.full(t.size + 1, i))
            vals.append(witness)
            dists.append(np.where(feasible, dist, np.inf))
            spans.append((i, start, start + t.size + 1))
            start += t.size + 1
        self.col = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
        self.V = np.concatenate(vals, axis=1) if vals else np.zeros((n, 0))
        self.D = np.concatenate(dists, axis=1) if dists else np.zeros((n, 0))
        self.spans = spans
        self.starts = np.array([a for _, a, _ in spans], dtype=np.int64)
        self.span_of = np.repeat(np.arange(len(spans)), [b - a for _, a, b in spans])
        self.groups: list[tuple[list[int], np.ndarray, np.ndarray]] = []
        for g in schema.groups:
            gc = list(g)
            if np.any(schema.immutable[gc]):
                continue
            eye = np.eye(len(gc))
            dist = np.abs(eye[None] - X0[:, None, gc]).max(axis=2) * schema.cost[gc].max()
            self.groups.append((gc, eye, dist))
        parts = [self.D] + [d for _, _, d in self.groups] + [np.zeros((n, 1))]
        allr = np.concatenate(parts, axis=1)
        allr = np.where(np.isfinite(allr), allr, np.inf)
        allr.sort(axis=1)
        # per row: the sorted distinct finite radii, padded with inf
        dup = np.zeros_like(allr, dtype=bool)
        dup[:, 1:] = allr[:, 1:] == allr[:, :-1]
        allr[dup] = np.inf
        allr.sort(axis=1)
        self.radii = allr
        self.n_radii = np.isfinite(allr).sum(axis=1)

    def moves(
        self, rows: np.ndarray, x: np.ndarray, radius: np.ndarray, picks: tuple[str, ...]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Candidate (row position, column) pairs off the current cells within the box:
        per feature, the farthest allowed cell on each side of the current one inside the box
        (``"far"`` in ``picks``) and the nearest on each side (``"near"``)."""
        V, D = self.V[rows], self.D[rows]
        ok = (D <= radius[:, None]) & (V != x[:, self.col])
        if not self.spans:
            ia, jj = np.nonzero(ok)
            return ia, jj
        j = np.broadcast_to(np.arange(self.col.size), ok.shape)
        starts = self.starts
        here = np.maximum.reduceat(np.where(V == x[:, self.col], j, -1), starts, axis=1)
        here_c = here[:, self.span_of]
        big = self.col.size
        below = ok & (j < here_c)
        above = ok & (j > here_c)
        chosen = []
        if "near" in picks:
            chosen.append(np.maximum.reduceat(np.where(below, j, -1), starts, axis=1))
            chosen.append(np.minimum.reduceat(np.where(above, j, big), starts, axis=1))
        if "far" in picks:
            chosen.append(np.minimum.reduceat(np.where(below, j, big), starts, axis=1))
            chosen.append(np.maximum.reduceat(np.where(above, j, -1), starts, axis=1))
        cand = np.stack(chosen, axis=2).reshape(rows.size, -1)
        ia = np.repeat(np.arange(rows.size), cand.shape[1])
        jj = cand.reshape(-1)
        keep = (jj >= 0) & (jj < big)
        pairs = np.unique(ia[keep] * big + jj[keep])
        return pairs // big, pairs % big

    def clip(self, rows: np.ndarray, x: np.ndarray, x0: np.ndarray, r: np.ndarray) -> np.ndarray:
        """Rows ``x`` with every coordinate moved to its nearest allowed cell in the box."""
        out = x0.copy()
        for i, a, b in self.spans:
            Vf, Df = self.V[rows, a:b], self.D[rows, a:b]
            gap = np.where(Df <= r[:, None], np.abs(Vf - x[:, [i]]), np.inf)
            out[:, i] = Vf[np.arange(rows.size), gap.argmin(axis=1)]
        for gc, eye, dist in self.groups:
            gap = np.abs(eye[None] - x[:, None, gc]).max(axis=2)
            gap = np.where(dist[rows] <= r[:, None], gap, np.inf)
            out[:, gc] = eye[gap.argmin(axis=1)]
        return out


def _first_per_row(rows: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For candidates grouped by ``rows``, the candidate with the smallest ``key`` per row."""
    order = np.lexsort((key, rows))
    rs = rows[order]
    first = np.ones(rs.size, dtype=bool)
    first[1:] = rs[1:] != rs[:-1]
    return rs[first], order[first]


def _box_search(
    plan: _Plan,
    table: _Table,
    schema: FeatureSchema,
    rows: np.ndarray,
    X0: np.ndarray,
    y: np.ndarray,
    radius: np.ndarray,
    start: np.ndarray,
    *,
    max_steps: int,
    evals: list[int],
    picks: tuple[str, ...],
) -> tuple[np.ndarray, np.ndarray]:
    """Steepest ascent on the margin over single-coordinate cell moves inside each row's box,
    all rows in lock-step. Returns which rows reached an adversarial point, and the points."""
    ens = plan.ens
    x0, yy = X0[rows], y[rows]
    X = start.copy()
    leaves = ens.apply(X)
    raw = plan.raw(leaves)
    cur, pred = _margin_pred(ens, raw, yy)
    found = pred != yy
    live = ~found
    cost = schema.cost
    for _ in range(max_steps):
        act = np.flatnonzero(live)
        if act.size == 0:
            break
        # single-feature moves inside the box: per feature, the neighbouring allowed cells
        # of the current one and the box's two extreme cells
        ia, jj = table.moves(rows[act], X[act], radius[act], picks)
        ra = act[ia]
        ff, vv = table.col[jj], table.V[rows[ra], jj]
        cand_raw = plan.moved(X, leaves, raw, ra, ff, vv)
        # each candidate's distance: the move's own and the row's other coordinates
        cd = np.abs(X[act] - x0[act]) * cost
        top = np.sort(cd, axis=1)[:, -2:] if cd.shape[1] > 1 else np.hstack([cd, cd])
        arg = cd.argmax(axis=1)
        pos = np.searchsorted(act, ra)
        rest = np.where(arg[pos] == ff, top[pos, 0], top[pos, 1])
        cand_d = np.maximum(rest, table.D[rows[ra], jj])
        moves: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        moves.append((ra, cand_raw, cand_d, np.stack([ff, np.zeros_like(ff)], axis=1)))
        for gi, (gc, eye, dist) in enumerate(table.groups):
            sel = dist[rows[act]] <= radius[act, None]
            ga, gk = np.nonzero(sel)
            gra = act[ga]
            block = X[gra].copy()
            block[:, gc] = eye[gk]
            graw = ens.scores(block)
            other = np.abs(block - x0[gra]) * cost
            moves.append((gra, graw, other.max(axis=1), np.stack([-1 - gi + 0 * gk, gk], 1)))
        mr = np.concatenate([m[0] for m in moves])
        if mr.size == 0:
            break
        mraw = np.concatenate([m[1] for m in moves])
        md = np.concatenate([m[2] for m in moves])
        mv = np.concatenate([m[3] for m in moves])
        mvals = np.concatenate([vv] + [np.zeros(m[0].size) for m in moves[1:]])
        stuck = np.setdiff1d(act, mr)  # no move left inside the box
        live[stuck] = False
        evals[0] += mr.size
        margin, mpred = _margin_pred(ens, mraw, yy[mr])
        adv = mpred != yy[mr]
        # rows with an adversarial move: the one closest to the original row
        hit_rows, hit = _first_per_row(mr[adv], md[adv])
        hit = np.flatnonzero(adv)[hit]
        # other rows: the move that raises the margin most
        best_rows, best = _first_per_row(mr, -margin)
        done_now = np.zeros(X.shape[0], dtype=bool)
        for rws, idx, is_hit in ((hit_rows, hit, True), (best_rows, best, False)):
            if not is_hit:
                keep = ~done_now[rws] & (margin[idx] > cur[rws] + 1e-12)
                stall = rws[~done_now[rws] & ~keep]
                live[stall] = False
                rws, idx = rws[keep], idx[keep]
            for kind in np.unique(mv[idx, 0]):
                sel = mv[idx, 0] == kind
                rk, ik = rws[sel], idx[sel]
                if kind >= 0:
                    X[rk, kind] = mvals[ik]
                else:
                    gc, eye, _ = table.groups[-1 - kind]
                    X[np.ix_(rk, gc)] = eye[mv[ik, 1]]
            done_now[rws] = True
            if is_hit:
                found[rws] = True
                live[rws] = False
            else:
                cur[rws] = margin[idx]
        moved = np.flatnonzero(done_now & live)
        if moved.size:
            leaves[moved] = ens.apply(X[moved])
            raw[moved] = plan.raw(leaves[moved])
    return found, X


def fast_tree_attack(
    ensemble: TreeEnsemble,
    x: Any,
    y: Any,
    *,
    schema: FeatureSchema | None = None,
    max_steps: int = 100,
    thorough: bool = False,
) -> FastTreeResult:
    """The cell-search attack (module docstring) on each row; L∞, cost-weighted by the schema.

    Each step tries, per feature, the farthest allowed cell on either side inside the box;
    ``thorough`` adds the nearest cells on either side of the current one (slower, a little
    closer on some rows).

    All rows are searched in lock-step (one batched evaluation per step), and a candidate
    move re-walks only the trees that split on the feature it changes.
    """
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
    n = X.shape[0]
    found = np.zeros(n, dtype=bool)
    dist = np.full(n, np.inf)
    out = X.copy()
    if n == 0:
        return FastTreeResult(found=found, distance=dist, x_adv=out, evaluations=0)
    wrong = ensemble.predict(X) != labels
    found[wrong], dist[wrong] = True, 0.0
    todo = np.flatnonzero(~wrong)
    if todo.size == 0:
        return FastTreeResult(found=found, distance=dist, x_adv=out, evaluations=0)
    plan = _Plan(ensemble)
    evals = [0]
    picks = _THOROUGH if thorough else _FAR
    Xt, yt = X[todo], labels[todo]
    table = _Table(ensemble, schema, Xt)
    every = np.arange(todo.size)
    top = table.radii[every, table.n_radii - 1]
    search = functools.partial(
        _box_search, plan, table, schema, max_steps=max_steps, evals=evals, picks=picks
    )
    ok, cand = search(every, Xt, yt, top, Xt)
    best = np.where(ok[:, None], cand, Xt)
    best_d = np.where(ok, schema.distance(best, Xt, "linf"), np.inf)
    lo = np.zeros(todo.size, dtype=np.int64)
    hi = np.array([np.searchsorted(table.radii[i], best_d[i]) for i in every])
    hi = np.where(ok, hi, 0)
    while True:
        act = np.flatnonzero(lo < hi)
        if act.size == 0:
            break
        mid = (lo[act] + hi[act]) // 2
        r = table.radii[act, mid]
        got, pts = search(act, Xt, yt, r, Xt[act])
        miss = np.flatnonzero(~got)
        if miss.size:
            sub = act[miss]
            restart = table.clip(sub, best[sub], Xt[sub], r[miss])
            got2, pts2 = search(sub, Xt, yt, r[miss], restart)
            got[miss], pts[miss] = got2, pts2
        d = np.where(got, schema.distance(pts, Xt[act], "linf"), np.inf)
        better = got & (d < best_d[act])
        b = act[better]
        best[b], best_d[b] = pts[better], d[better]
        hi[b] = [np.searchsorted(table.radii[i], best_d[i]) for i in b]
        lo[act[~better]] = mid[~better] + 1
    done = np.isfinite(best_d)
    idx = todo[done]
    found[idx], dist[idx], out[idx] = True, best_d[done], best[done]
    return FastTreeResult(found=found, distance=dist, x_adv=out, evaluations=evals[0])


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
