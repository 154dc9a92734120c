"""Exact minimal adversarial perturbations of tree ensembles by mixed-integer programming.

The formulation follows Kantchelian, Tygar and Joseph, "Evasion and hardening of tree
ensemble classifiers" (ICML 2016), solved with scipy's HiGHS (``scipy.optimize.milp``):

- one binary *predicate* ``p[i, j]`` per feature ``i`` and distinct threshold ``t_j`` the
  ensemble uses on it (1 = the input goes left at ``t_j``), monotone in ``j``; the predicates
  of a feature choose one of the intervals between its thresholds;
- one continuous *leaf* variable per leaf: each tree picks one leaf, and a leaf may only be
  picked when the predicates on its root path agree with it;
- the ensemble's class scores are linear in the leaf variables, and the target class must
  beat the true one.

The cost of each interval is the distance from the original value to the nearest point of the
interval *that the data's rules allow* (range, integers, category codes; immutable features
keep their interval; one-hot groups get one binary per column and exactly one is on), so the
perturbation is minimal **within the schema**. Per-feature costs scale the distances. Because
a feature's distance depends only on its interval, L∞ (an epigraph variable), L1 (the sum)
and L2 (the sum of squared distances, then a square root) are all exact linear programs.

The reported distance is the infimum over the closure of the adversarial region (a strict
split ``x < t`` is approached, not reached): no perturbation of smaller norm changes the
prediction, which is the certificate; the returned witness lies inside the region (one float
step past a strict threshold) and is verified against the ensemble.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from bastion.data.tabular import FeatureSchema
from bastion.errors import CapabilityError, ConfigurationError
from bastion.models.trees import TreeEnsemble

__all__ = ["ExactSolution", "TreeMILP", "feature_cells", "feature_cells_batch", "tree_structure"]

_NORMS = ("linf", "l1", "l2")
#: the target class must beat the true one by this much (relative to the score scale)
_MARGIN = 1e-9


@dataclass(frozen=True)
class ExactSolution:
    """The outcome for one row.

    ``status``: ``"adversarial"`` (``distance`` is the exact minimum and ``x_adv`` a verified
    witness), ``"robust"`` (no input the rules allow changes the prediction, or none within
    ``upper``: ``distance`` is ``inf`` or the bound it exceeds), ``"misclassified"`` (the
    original prediction is already not ``y``: distance 0) or ``"timeout"`` (the solver hit
    its time limit; ``distance`` is then the best lower bound and not exact).
    """

    status: str
    distance: float
    x_adv: np.ndarray
    target: int | None
    seconds: float


def _repr_grid(f32: bool) -> type:
    return np.float32 if f32 else np.float64


def _ceil_repr(v: np.ndarray, f32: bool) -> np.ndarray:
    """Smallest representable value >= v (float32 grid for float32 ensembles)."""
    if not f32:
        return v
    with np.errstate(over="ignore"):
        f = v.astype(np.float32)
    f = np.where(f.astype(np.float64) < v, np.nextafter(f, np.float32(np.inf)), f)
    return f.astype(np.float64)


def _floor_repr(v: np.ndarray, f32: bool) -> np.ndarray:
    if not f32:
        return v
    with np.errstate(over="ignore"):
        f = v.astype(np.float32)
    f = np.where(f.astype(np.float64) > v, np.nextafter(f, np.float32(-np.inf)), f)
    return f.astype(np.float64)


def _next_up(v: np.ndarray, f32: bool) -> np.ndarray:
    t = _repr_grid(f32)
    return np.nextafter(v.astype(t), t(np.inf)).astype(np.float64)


def _next_down(v: np.ndarray, f32: bool) -> np.ndarray:
    t = _repr_grid(f32)
    return np.nextafter(v.astype(t), t(-np.inf)).astype(np.float64)


class TreeMILP:
    """The MILP of one ensemble under one schema; :meth:`solve` handles one row.

    The tree-structure rows are built once; each row to attack adds its interval costs, its
    feasibility rows and the class constraint.
    """

    def __init__(
        self,
        ensemble: TreeEnsemble,
        *,
        schema: FeatureSchema | None = None,
        norm: str = "linf",
        time_limit: float | None = None,
    ) -> None:
        if norm not in _NORMS:
            raise ConfigurationError(f"norm must be one of {_NORMS}, got {norm!r}")
        if schema is None:
            schema = FeatureSchema.unconstrained(ensemble.n_features)
        if schema.n_features != ensemble.n_features:
            raise ConfigurationError(
                f"the schema has {schema.n_features} columns, the ensemble "
                f"{ensemble.n_features} features"
            )
        if time_limit is not None and not time_limit > 0:
            raise ConfigurationError(f"time_limit must be > 0 seconds, got {time_limit!r}")
        self.ensemble = ensemble
        self.schema = schema
        self.norm = norm
        self.time_limit = time_limit
        self._memo: dict[tuple[int, float], tuple[np.ndarray, np.ndarray, np.ndarray, int]] = {}
        self._build_structure()

    # -- structure ------------------------------------------------------------------------
    def _build_structure(self) -> None:
        ens, schema = self.ensemble, self.schema
        internal = ~ens.is_leaf()
        grouped = schema.grouped()
        # Predicate variables: one per (feature, distinct threshold).
        self.thresholds: dict[int, np.ndarray] = {}
        self.p_start: dict[int, int] = {}
        nvar = 0
        for i in range(ens.n_features):
            t = ens.thresholds(i)
            if t.size:
                self.thresholds[i] = t
                self.p_start[i] = nvar
                nvar += t.size
        self.n_pred = nvar
        # One-hot "on" binaries for every grouped column.
        self.o_index: dict[int, int] = {}
        for g in schema.groups:
            for i in g:
                self.o_index[i] = nvar
                nvar += 1
        # Leaves.
        leaves = np.flatnonzero(~internal)
        self.leaf_index = {int(n): nvar + k for k, n in enumerate(leaves)}
        self.leaves = leaves
        nvar += leaves.size
        self.b_index = nvar  # the L∞ epigraph variable (unused for l1/l2)
        nvar += 1
        self.n_vars = nvar

        rows: list[tuple[list[int], list[float], float, float]] = []
        # Monotone predicates.
        for i, t in self.thresholds.items():
            s = self.p_start[i]
            for j in range(t.size - 1):
                rows.append(([s + j, s + j + 1], [1.0, -1.0], -np.inf, 0.0))
        # One-hot: exactly one column on; predicates of grouped columns follow their value.
        for g in schema.groups:
            rows.append(([self.o_index[i] for i in g], [1.0] * len(g), 1.0, 1.0))
        for col in (int(v) for v in np.flatnonzero(grouped)):
            for j, thr in enumerate(self.thresholds.get(col, ())):
                gl0 = float(ens.goes_left(np.array([0.0]), thr)[0])
                gl1 = float(ens.goes_left(np.array([1.0]), thr)[0])
                # p = gl0 + (gl1 - gl0) * o
                rows.append(
                    ([self.p_start[col] + j, self.o_index[col]], [1.0, gl0 - gl1], gl0, gl0)
                )
        # Trees: one leaf each; a leaf needs every predicate on its path.
        parent = np.full(ens.n_nodes, -1, dtype=np.int64)
        side = np.zeros(ens.n_nodes, dtype=np.int64)  # 1 = left child of its parent
        nodes = np.flatnonzero(internal)
        parent[ens.left[nodes]] = nodes
        parent[ens.right[nodes]] = nodes
        side[ens.left[nodes]] = 1
        pred_of = np.full(ens.n_nodes, -1, dtype=np.int64)
        for n in nodes:
            f = int(ens.feature[n])
            j = int(np.searchsorted(self.thresholds[f], ens.threshold[n]))
            pred_of[n] = self.p_start[f] + j
        left_members: dict[int, list[int]] = {}
        right_members: dict[int, list[int]] = {}
        for leaf in leaves:
            child, node = int(leaf), int(parent[leaf])
            while node != -1:
                (left_members if side[child] else right_members).setdefault(node, []).append(
                    self.leaf_index[int(leaf)]
                )
                child, node = node, int(parent[node])
        for tree_id in range(ens.n_trees):
            members = [
                self.leaf_index[int(n)] for n in ens.tree_nodes(tree_id) if ens.left[n] == -1
            ]
            rows.append((members, [1.0] * len(members), 1.0, 1.0))
        for node, members in left_members.items():  # sum(left leaves) <= p
            rows.append(
                ([*members, int(pred_of[node])], [1.0] * len(members) + [-1.0], -np.inf, 0.0)
            )
        for node, members in right_members.items():  # sum(right leaves) <= 1 - p
            rows.append(([*members, int(pred_of[node])], [1.0] * (len(members) + 1), -np.inf, 1.0))
        self._structure = _assemble(rows, self.n_vars)
        self.leaf_values = ens.scale * ens.value[leaves]  # (n_leaves, n_outputs)
        leaf_cols = np.array([self.leaf_index[int(n)] for n in leaves], dtype=np.int64)
        self._leaf_cols = leaf_cols
        # For the box bound: each split's threshold index, each node's tree.
        self._thr_index = np.where(internal, pred_of - np.array(
            [self.p_start.get(int(f), 0) for f in ens.feature]
        ), -1)
        sizes = np.diff(np.append(ens.roots, ens.n_nodes))
        self._tree_of = np.repeat(np.arange(ens.n_trees), sizes)
        self._parent, self._side = parent, side

    def box_bound(self, x0: np.ndarray, y: int, r: float) -> bool:
        """Whether a cheap bound proves that no input the rules allow within ``r`` (L∞,
        cost-weighted) of ``x0`` changes its class ``y``: each tree's best leaf among those
        its box can reach, added up (trees taken independently, so a sound over-estimate)."""
        ens = self.ensemble
        reach, _, _ = self._reach(x0, r)
        leaf_reach = reach[self.leaves]
        trees = self._tree_of[self.leaves[leaf_reach]]
        for target in range(ens.n_classes):
            if target == y:
                continue
            coef, need = self._class_coef(y, target)
            d = coef[leaf_reach]
            best = np.full(ens.n_trees, -np.inf)
            np.maximum.at(best, trees, d)
            scale = max(1.0, float(np.abs(d).max(initial=0.0)))
            if best.sum() >= need - 1e-9 * scale * ens.n_trees:
                return False
        return True

    def _reach(self, x0: np.ndarray, r: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Nodes some input within the box of radius ``r`` (and the rules) reaches, and per
        feature the lowest and highest cell the box allows."""
        ens, schema = self.ensemble, self.schema
        kmin = np.zeros(ens.n_features, dtype=np.int64)
        kmax = np.zeros(ens.n_features, dtype=np.int64)
        grouped = schema.grouped()
        for i, t in self.thresholds.items():
            if grouped[i]:
                moves = float(schema.cost[i]) <= r * (1 + 1e-7) + 1e-9
                vals = np.array([0.0, 1.0]) if moves and not schema.immutable[i] else x0[[i]]
                cells = (~ens.goes_left(np.repeat(vals, t.size), np.tile(t, vals.size)))
                k = cells.reshape(vals.size, t.size).sum(axis=1)
                kmin[i], kmax[i] = int(k.min()), int(k.max())
                continue
            feasible, cost, _, own = self._intervals(i, float(x0[i]))
            ks = np.flatnonzero(feasible & (cost <= r * (1 + 1e-7) + 1e-9))
            kmin[i], kmax[i] = (int(ks[0]), int(ks[-1])) if ks.size else (own, own)
        internal = ens.left != -1
        j = self._thr_index
        f = ens.feature
        left_ok = internal & (kmin[f] <= j)
        right_ok = internal & (kmax[f] >= j + 1)
        reach = np.zeros(ens.n_nodes, dtype=bool)
        reach[ens.roots] = True
        frontier = ens.roots
        while frontier.size:
            inner = frontier[internal[frontier]]
            nxt = [ens.left[inner[left_ok[inner]]], ens.right[inner[right_ok[inner]]]]
            frontier = np.concatenate(nxt)
            reach[frontier] = True
        return reach, kmin, kmax

    def _reduced(
        self, x0: np.ndarray, y: int, r: float, *, feasibility: bool
    ) -> ExactSolution:
        """The L∞ problem inside the box of radius ``r``, reduced to what the box can reach:
        leaves no input in the box reaches are dropped, trees left with one leaf become
        constants, and each feature keeps only the thresholds of splits the box can take both
        ways (the cells between two kept thresholds merge: same leaves, the cheapest allowed
        cell stands for them). Exact within the box; ``robust`` when nothing in it is
        adversarial. Not for one-hot groups (see :meth:`_solve`)."""
        import time

        start = time.perf_counter()
        ens = self.ensemble
        pred = int(ens.predict(x0[None, :])[0])
        if pred != y:
            return ExactSolution("misclassified", 0.0, x0.copy(), pred, 0.0)
        reach, kmin, kmax = self._reach(x0, r)
        leaves = self.leaves
        lr = reach[leaves]
        tree_of_leaf = self._tree_of[leaves]
        n_reach = np.bincount(tree_of_leaf[lr], minlength=ens.n_trees)
        live_tree = n_reach >= 2
        live_leaf = lr & live_tree[tree_of_leaf]
        fixed_leaf = lr & ~live_tree[tree_of_leaf]
        internal = ens.left != -1
        f_all, j_all = ens.feature, self._thr_index
        both = (
            internal & reach & live_tree[self._tree_of]
            & (kmin[f_all] <= j_all) & (kmax[f_all] >= j_all + 1)
        )
        split_nodes = np.flatnonzero(both)
        # variables: kept predicates (feature, threshold index), live leaves, b
        keys = np.unique(np.stack([f_all[split_nodes], j_all[split_nodes]], axis=1), axis=0)
        pvar = {(int(a), int(b)): k for k, (a, b) in enumerate(keys)}
        n_p = len(pvar)
        live_idx = np.flatnonzero(live_leaf)
        lvar = {int(leaves[k]): n_p + q for q, k in enumerate(live_idx)}
        b_var = n_p + live_idx.size
        n_vars = b_var + 1
        rows: list[tuple[list[int], list[float], float, float]] = []
        by_feature: dict[int, list[int]] = {}
        for a, b in pvar:
            by_feature.setdefault(a, []).append(b)
        for a, js in by_feature.items():
            js.sort()
            for j0, j1 in itertools.pairwise(js):
                rows.append(([pvar[(a, j0)], pvar[(a, j1)]], [1.0, -1.0], -np.inf, 0.0))
        for t in np.flatnonzero(live_tree):
            members = [lvar[int(n)] for n in leaves[live_leaf & (tree_of_leaf == t)]]
            rows.append((members, [1.0] * len(members), 1.0, 1.0))
        # each split node: its left live leaves need p, its right ones 1 - p
        parent = self._parent
        side = self._side
        left_of: dict[int, list[int]] = {}
        right_of: dict[int, list[int]] = {}
        for n in leaves[live_leaf]:
            child, node = int(n), int(parent[n])
            while node != -1:
                if both[node]:
                    (left_of if side[child] else right_of).setdefault(node, []).append(
                        lvar[int(n)]
                    )
                child, node = node, int(parent[node])
        for node in (int(v) for v in split_nodes):
            var = pvar[(int(f_all[node]), int(j_all[node]))]
            mem = left_of.get(int(node), [])
            if mem:
                rows.append(([*mem, var], [1.0] * len(mem) + [-1.0], -np.inf, 0.0))
            mem = right_of.get(int(node), [])
            if mem:
                rows.append(([*mem, var], [1.0] * (len(mem) + 1), -np.inf, 1.0))
        # merged cells per feature: cost rows (b >= cost) and holes
        chosen: dict[int, tuple[list[int], np.ndarray, np.ndarray]] = {}
        for a, js in by_feature.items():
            feasible, cost, witness, own = self._intervals(a, float(x0[a]))
            ok = feasible & (cost <= r * (1 + 1e-7) + 1e-9)
            edges = [int(kmin[a]), *[j + 1 for j in js], int(kmax[a]) + 1]
            mc = np.zeros(len(js) + 1)
            mw = np.zeros(len(js) + 1)
            for q in range(len(js) + 1):
                cells = np.arange(edges[q], edges[q + 1])
                good = cells[ok[cells]]
                if good.size == 0:  # a hole: this merged cell may not be chosen
                    cols, coefs, const = [], [], 0.0
                    if q < len(js):
                        cols.append(pvar[(a, js[q])])
                        coefs.append(1.0)
                    else:
                        const = 1.0
                    if q > 0:
                        cols.append(pvar[(a, js[q - 1])])
                        coefs.append(-1.0)
                    rows.append((cols, coefs, -const, -const))
                    mw[q] = x0[a]
                    continue
                best_cell = good[np.argmin(cost[good])]
                mc[q], mw[q] = cost[best_cell], witness[best_cell]
                if edges[q] <= own < edges[q + 1]:
                    mc[q], mw[q] = 0.0, x0[a]
            pv = [pvar[(a, j)] for j in js]
            chosen[a] = (pv, mc, mw)
            if np.any(mc > 0):  # b >= mc_m + sum_q p_q (mc_q - mc_{q+1})
                diffs = [float(v) for v in mc[:-1] - mc[1:]]
                rows.append(([*pv, b_var], [*diffs, -1.0], -np.inf, -float(mc[-1])))
        rows.append(([b_var], [1.0], -np.inf, float(r)))
        objective = np.zeros(n_vars)
        objective[b_var] = 0.0 if feasibility else 1.0
        integrality = np.zeros(n_vars)
        integrality[:n_p] = 1
        best: ExactSolution | None = None
        targets = [c for c in range(ens.n_classes) if c != y]
        for target in targets:
            coef, need = self._class_coef(y, target)
            const = float(coef[fixed_leaf].sum())
            cls = coef[live_idx]
            extra = [*rows, ([n_p + q for q in range(live_idx.size)], list(cls), need - const,
                             np.inf)]
            if best is not None:
                extra.append(([b_var], [1.0], -np.inf, best.distance))
            mat, lo, hi = _assemble(extra, n_vars)
            options: dict[str, float | bool] = {"disp": False, "mip_rel_gap": 0.0}
            if self.time_limit is not None:
                options["time_limit"] = float(self.time_limit)
            ub = np.ones(n_vars)
            ub[b_var] = np.inf
            res = milp(
                objective,
                constraints=LinearConstraint(mat, lo, hi),
                integrality=integrality,
                bounds=Bounds(np.zeros(n_vars), ub),
                options=options,
            )
            if res.x is None:
                if res.status == 2:  # infeasible: nothing adversarial for this target
                    continue
                # a time limit, or a numerical failure: the full formulation decides
                status = "timeout" if res.status == 1 else "undecided"
                return ExactSolution(status, math.inf, x0.copy(), target, 0.0)
            z = res.x
            x_adv = x0.copy()
            parts = [0.0]
            for a, (pv, mc, mw) in chosen.items():
                q = int(len(pv) - np.round(z[pv]).sum())
                x_adv[a] = mw[q]
                parts.append(float(mc[q]))
            status = "adversarial" if res.status == 0 else "timeout"
            if int(ens.predict(x_adv[None, :])[0]) == y:
                status = "unverified"
            sol = ExactSolution(status, max(parts), x_adv, target, 0.0)
            if best is None or sol.distance < best.distance:
                best = sol
            if feasibility:
                break
        seconds = time.perf_counter() - start
        if best is None:
            return ExactSolution("robust", float(r), x0.copy(), None, seconds)
        return ExactSolution(best.status, best.distance, best.x_adv, best.target, seconds)

    # -- per row --------------------------------------------------------------------------
    def _intervals(self, i: int, x0: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        key = (i, x0)
        hit = self._memo.get(key)
        if hit is None:
            hit = feature_cells(self.ensemble, self.schema, i, x0, self.thresholds[i])
            self._memo[key] = hit
        return hit

    def prime(self, X: np.ndarray) -> None:
        """Compute the cells of every row of ``X`` at once (vectorised), for later solves."""
        X = np.asarray(X, dtype=np.float64)
        if len(self._memo) > 200_000:
            self._memo.clear()
        for i, t in self.thresholds.items():
            if i in self.o_index:
                continue
            feasible, cost, witness, own = feature_cells_batch(
                self.ensemble, self.schema, i, X[:, i], t
            )
            for r in range(X.shape[0]):
                self._memo[(i, float(X[r, i]))] = (feasible[r], cost[r], witness[r], int(own[r]))

    def solve(
        self,
        x0: np.ndarray,
        y: int,
        *,
        upper: float | None = None,
        hint: float | None = None,
        hint_x: np.ndarray | None = None,
    ) -> ExactSolution:
        """The minimal perturbation of row ``x0`` (true label ``y``) within the schema.

        ``upper`` bounds the search: a row with no adversarial example within it is reported
        ``robust`` with ``distance`` = ``upper`` (a certificate at that radius). ``hint`` is
        the distance of a known adversarial example (e.g. from the fast attack): cells farther
        than it cannot hold the optimum (a feature's own distance never exceeds the total),
        so they are pruned before the solve, which keeps it exact and makes it much smaller.

        ``hint_x`` (L∞), the adversarial row behind ``hint``: the exact minimum is one of the
        finitely many cell distances, so when no adversarial row exists within the largest of
        them below ``hint_x``'s (a feasibility problem over a smaller box, usually proven
        infeasible quickly), ``hint_x`` is optimal and no minimisation runs.
        """
        if hint_x is not None and self.norm == "linf":
            proof = self._prove(np.asarray(x0, dtype=np.float64).reshape(-1), y, hint_x, upper)
            if proof is not None:
                return proof
        x0 = np.asarray(x0, dtype=np.float64).reshape(-1)
        if self.norm == "linf" and not self.schema.groups:
            # the problem reduced to the box of the best radius known (exact within it)
            box = upper if hint is None or not math.isfinite(hint) else min(upper or hint, hint)
            if box is not None:
                sol = self._reduced(x0, y, box * (1 + 1e-7) + 1e-9, feasibility=False)
                if sol.status in ("adversarial", "misclassified", "timeout"):
                    return sol
                if sol.status == "robust" and upper is not None and box >= upper:
                    return ExactSolution("robust", float(upper), x0.copy(), None, sol.seconds)
        if hint is not None and math.isfinite(hint):
            bound = hint if upper is None else min(upper, hint)
            sol = self._solve(x0, y, upper=upper, prune=bound * (1 + 1e-7) + 1e-9)
            if sol.status in ("adversarial", "misclassified"):
                return sol
        return self._solve(x0, y, upper=upper, prune=upper)

    def _prove(
        self, x0: np.ndarray, y: int, hint_x: np.ndarray, upper: float | None
    ) -> ExactSolution | None:
        """``hint_x`` as the exact optimum when nothing closer exists (see :meth:`solve`)."""
        import time

        start = time.perf_counter()
        ens = self.ensemble
        hx = np.asarray(hint_x, dtype=np.float64).reshape(-1)
        pred = int(ens.predict(hx[None, :])[0])
        if pred == y or int(ens.predict(x0[None, :])[0]) != y:
            return None
        if self.schema.check(hx[None, :], x0[None, :])[0]:
            return None
        parts, radii = [0.0], [np.zeros(1)]
        for i, t in self.thresholds.items():
            if i in self.o_index:
                continue
            feasible, cost, _, _ = self._intervals(i, float(x0[i]))
            k = int(np.sum(~ens.goes_left(np.full(t.size, hx[i]), t)))
            parts.append(float(cost[k]))
            radii.append(cost[feasible])
        for i in self.o_index:
            w = float(self.schema.cost[i])
            parts.append(w * abs(hx[i] - x0[i]))
            radii.append(np.array([w]))
        free = [i for i in range(ens.n_features) if i not in self.thresholds]
        parts += [float(self.schema.cost[i]) * abs(hx[i] - x0[i]) for i in free]
        dist = max(parts)
        if upper is not None and dist > upper:
            return None
        below = np.concatenate(radii)
        below = below[below * (1 + 1e-7) + 1e-9 < dist]
        if below.size:
            r = float(below.max())
            if self.box_bound(x0, y, r):
                return ExactSolution(
                    "adversarial", dist, hx.copy(), pred, time.perf_counter() - start
                )
            if self.schema.groups:
                closer = self._solve(x0, y, upper=r, prune=r, feasibility=True)
            else:
                closer = self._reduced(x0, y, r, feasibility=True)
            if closer.status != "robust":
                return None
        return ExactSolution("adversarial", dist, hx.copy(), pred, time.perf_counter() - start)

    def _solve(
        self,
        x0: np.ndarray,
        y: int,
        *,
        upper: float | None,
        prune: float | None,
        feasibility: bool = False,
    ) -> ExactSolution:
        import time

        start = time.perf_counter()
        ens = self.ensemble
        x0 = np.asarray(x0, dtype=np.float64).reshape(-1)
        pred = int(ens.predict(x0[None, :])[0])
        if pred != y:
            return ExactSolution("misclassified", 0.0, x0.copy(), pred, 0.0)
        per_feature: dict[int, tuple[np.ndarray, int, np.ndarray]] = {}
        rows: list[tuple[list[int], list[float], float, float]] = []
        cost_rows: list[tuple[list[int], list[float], float]] = []  # (cols, coefs, constant)
        lb = np.zeros(self.n_vars)
        ub = np.ones(self.n_vars)
        ub[self.b_index] = np.inf
        for i in self.thresholds:
            if i in self.o_index:
                continue
            feasible, cost, witness, own = self._intervals(i, float(x0[i]))
            if prune is not None:
                feasible = feasible & (cost <= prune * (1 + 1e-7) + 1e-9)
                feasible[own] = True
            per_feature[i] = (witness, own, cost)
            s, m = self.p_start[i], self.thresholds[i].size
            # Interval k is chosen iff p_{k+1} - p_k = 1 (p_0 = 0, p_{m+1} = 1). Outside the
            # allowed cells' span the predicates are fixed (bounds); holes inside need rows.
            ks = np.flatnonzero(feasible)
            kmin, kmax = int(ks[0]), int(ks[-1])
            ub[s : s + kmin] = 0.0
            lb[s + kmax : s + m] = 1.0
            for k in (int(v) for v in np.flatnonzero(~feasible[kmin : kmax + 1]) + kmin):
                cols: list[int] = []
                coefs: list[float] = []
                const = 0.0
                if k + 1 <= m:
                    cols.append(s + k)  # p_{k+1} is variable s + k
                    coefs.append(1.0)
                else:
                    const += 1.0
                if k >= 1:
                    cols.append(s + k - 1)
                    coefs.append(-1.0)
                rows.append((cols, coefs, -const, -const))
            c = cost**2 if self.norm == "l2" else cost
            if np.any(c > 0):
                # sum_k c_k (p_{k+1} - p_k) = c_m + sum_j p_j (c_{j-1} - c_j)
                diffs = [float(v) for v in c[:-1] - c[1:]]
                cost_rows.append((list(range(s, s + m)), diffs, float(c[-1])))
        for i, oi in self.o_index.items():
            w = float(self.schema.cost[i])
            wc = w**2 if self.norm == "l2" else w
            if self.schema.immutable[i]:
                rows.append(([oi], [1.0], float(x0[i]), float(x0[i])))
            # changed = o if x0 = 0 else 1 - o
            if x0[i] > 0.5:
                cost_rows.append(([oi], [-wc], wc))
            else:
                cost_rows.append(([oi], [wc], 0.0))
        objective = np.zeros(self.n_vars)
        if self.norm == "linf":
            objective[self.b_index] = 0.0 if feasibility else 1.0
            for cols, coefs, const in cost_rows:
                rows.append(([*cols, self.b_index], [*coefs, -1.0], -np.inf, -const))
            if upper is not None:
                rows.append(([self.b_index], [1.0], -np.inf, float(upper)))
        else:
            constant = 0.0
            for cols, coefs, const in cost_rows:
                np.add.at(objective, cols, coefs)
                constant += const
            if upper is not None:
                bound = float(upper) ** 2 if self.norm == "l2" else float(upper)
                nz = [int(v) for v in np.flatnonzero(objective)]
                rows.append((nz, [float(objective[v]) for v in nz], -np.inf, bound - constant))
        scores0 = ens.class_scores(x0[None, :])[0]
        best: ExactSolution | None = None
        targets = [c for c in range(ens.n_classes) if c != y]
        targets.sort(key=lambda c: -scores0[c])
        for target in targets:
            sol = self._solve_target(
                x0, y, target, rows, objective, per_feature, best, (lb, ub)
            )
            if sol is not None and (best is None or sol.distance < best.distance):
                best = sol
        seconds = time.perf_counter() - start
        if best is None:
            dist = math.inf if upper is None else float(upper)
            return ExactSolution("robust", dist, x0.copy(), None, seconds)
        return ExactSolution(best.status, best.distance, best.x_adv, best.target, seconds)

    def _class_coef(self, y: int, target: int) -> tuple[np.ndarray, float]:
        """Per leaf (``self.leaves`` order), its part of ``score_target - score_y``, and what
        their sum must reach for ``target`` to win."""
        ens = self.ensemble
        vals = self.leaf_values
        if ens.link == "sigmoid":  # class scores [0, m]
            sign = 1.0 if target == 1 else -1.0
            coef = sign * vals[:, 0]
            const = sign * ens.base_score[0]
        else:
            coef = vals[:, target] - vals[:, y]
            const = float(ens.base_score[target] - ens.base_score[y])
        scale = max(1.0, float(np.abs(coef).max(initial=0.0)))
        # argmax takes the first of tied classes: the target needs strictly more only if later
        margin = _MARGIN * scale if target > y else 0.0
        return coef, float(margin - const)

    def _class_row(self, y: int, target: int) -> tuple[list[int], list[float], float]:
        """``score_target - score_y >= margin`` as a row over leaf variables."""
        coef, need = self._class_coef(y, target)
        nz = np.flatnonzero(coef)
        return list(self._leaf_cols[nz]), list(coef[nz]), need

    def _solve_target(
        self,
        x0: np.ndarray,
        y: int,
        target: int,
        rows: list[tuple[list[int], list[float], float, float]],
        objective: np.ndarray,
        per_feature: dict[int, tuple[np.ndarray, int, np.ndarray]],
        best: ExactSolution | None,
        var_bounds: tuple[np.ndarray, np.ndarray],
    ) -> ExactSolution | None:
        cols, coefs, lb = self._class_row(y, target)
        extra = [*rows, (cols, coefs, lb, np.inf)]
        if best is not None and self.norm == "linf":
            extra.append(([self.b_index], [1.0], -np.inf, best.distance))
        mat, lo, hi = _assemble(extra, self.n_vars)
        A = sparse.vstack([self._structure[0], mat]).tocsr()
        integrality = np.zeros(self.n_vars)
        integrality[: self.b_index - self.leaves.size] = 1  # predicates and one-hot binaries
        options: dict[str, float | bool] = {"disp": False, "mip_rel_gap": 0.0}
        if self.time_limit is not None:
            options["time_limit"] = float(self.time_limit)
        res = milp(
            objective,
            constraints=LinearConstraint(
                A,
                np.concatenate([self._structure[1], lo]),
                np.concatenate([self._structure[2], hi]),
            ),
            integrality=integrality,
            bounds=Bounds(*var_bounds),
            options=options,
        )
        if res.x is None:
            if res.status == 2:
                return None  # infeasible: no adversarial example for this target
            # a time limit (or the solver failed): nothing is proven for this row
            return ExactSolution("timeout", math.inf, x0.copy(), target, 0.0)
        z = res.x
        x_adv = x0.copy()
        parts = []
        for i, (witness, own, cost) in per_feature.items():
            s, m = self.p_start[i], self.thresholds[i].size
            k = int(m - np.round(z[s : s + m]).sum())  # thresholds passed right = interval
            x_adv[i] = witness[k] if k != own else x0[i]
            parts.append(cost[k])
        for i, oi in self.o_index.items():
            x_adv[i] = float(round(z[oi]))
            parts.append(float(self.schema.cost[i]) * abs(x_adv[i] - x0[i]))
        arr = np.asarray(parts, dtype=np.float64)
        if self.norm == "linf":
            distance = float(arr.max(initial=0.0))
        elif self.norm == "l1":
            distance = float(arr.sum())
        else:
            distance = float(np.sqrt((arr**2).sum()))
        status = "adversarial" if res.status == 0 else "timeout"
        if int(self.ensemble.predict(x_adv[None, :])[0]) == y:
            status = "unverified"
        return ExactSolution(status, distance, x_adv, target, 0.0)


def feature_cells(
    ens: TreeEnsemble, schema: FeatureSchema, i: int, x0: float, t: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The cells of feature ``i`` between its sorted thresholds ``t``, for original value ``x0``.

    Per cell ``k`` (``k`` thresholds passed to the right): whether the schema allows a value
    in it, the cost-weighted distance from ``x0`` to its closure (the infimum), the nearest
    allowed value in it (the witness); and the cell of ``x0`` itself.
    """
    feasible, cost, witness, own = feature_cells_batch(ens, schema, i, np.array([x0]), t)
    return feasible[0], cost[0], witness[0], int(own[0])


def feature_cells_batch(
    ens: TreeEnsemble, schema: FeatureSchema, i: int, x0: np.ndarray, t: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`feature_cells` for many original values ``x0`` (shape ``(n,)``) at once:
    arrays of shape ``(n, len(t) + 1)`` and the own cells, shape ``(n,)``."""
    f32 = ens.float32
    m = t.size
    x0 = np.asarray(x0, dtype=np.float64).reshape(-1)
    n = x0.size
    lo_t = np.concatenate([[-np.inf], t])
    hi_t = np.concatenate([t, [np.inf]])
    if ens.strict:  # left iff x < t: interval k is [t_k, t_{k+1})
        lo_att = np.where(np.isfinite(lo_t), _ceil_repr(lo_t, f32), -np.inf)
        hi_att = np.where(np.isfinite(hi_t), _next_down(_ceil_repr(hi_t, f32), f32), np.inf)
    else:  # left iff x <= t: interval k is (t_k, t_{k+1}]
        lo_att = np.where(np.isfinite(lo_t), _next_up(_floor_repr(lo_t, f32), f32), -np.inf)
        hi_att = np.where(np.isfinite(hi_t), _floor_repr(hi_t, f32), np.inf)
    low, high = float(schema.low[i]), float(schema.high[i])
    if math.isfinite(low):
        lo_att = np.maximum(lo_att, _ceil_repr(np.array([low]), f32)[0])
    if math.isfinite(high):
        hi_att = np.minimum(hi_att, _floor_repr(np.array([high]), f32)[0])
    lo_inf = np.maximum(lo_t, low)
    hi_inf = np.minimum(hi_t, high)
    # thresholds each x0 passes to the right
    own = (~ens.goes_left(np.repeat(x0, m), np.tile(t, n)).reshape(n, m)).sum(axis=1)
    xc = x0[:, None]
    codes = schema.allowed_values(i)
    if codes is not None:
        inside = (codes[None, :] >= lo_att[:, None]) & (codes[None, :] <= hi_att[:, None])
        dist = np.where(inside[None], np.abs(codes[None, None, :] - xc[:, :, None]), np.inf)
        feasible = np.broadcast_to(inside.any(axis=1), (n, m + 1)).copy()
        witness = codes[np.argmin(dist, axis=2)]
        cost = np.where(feasible, dist.min(axis=2), 0.0)
    else:
        if schema.integer[i]:
            lo_att, hi_att = np.ceil(lo_att), np.floor(hi_att)
            lo_inf, hi_inf = lo_att, hi_att
        feasible = np.broadcast_to(lo_att <= hi_att, (n, m + 1)).copy()
        witness = np.clip(xc, lo_att, hi_att)
        cost = np.maximum(np.maximum(lo_inf - xc, 0.0), xc - hi_inf)
    cost = np.where(feasible, cost, 0.0)
    witness = np.where(feasible, witness, xc)
    rows = np.arange(n)
    cost[rows, own], witness[rows, own], feasible[rows, own] = 0.0, x0, True
    if schema.immutable[i]:
        feasible = np.zeros((n, m + 1), dtype=bool)
        feasible[rows, own] = True
    return feasible, cost * float(schema.cost[i]), witness, own


def _assemble(
    rows: list[tuple[list[int], list[float], float, float]], n_vars: int
) -> tuple[sparse.csr_matrix, np.ndarray, np.ndarray]:
    indptr = [0]
    indices: list[int] = []
    data: list[float] = []
    lo, hi = [], []
    for cols, coefs, a, b in rows:
        indices.extend(cols)
        data.extend(coefs)
        indptr.append(len(indices))
        lo.append(a)
        hi.append(b)
    mat = sparse.csr_matrix(
        (np.asarray(data, dtype=np.float64), np.asarray(indices, dtype=np.int64), indptr),
        shape=(len(rows), n_vars),
    )
    return mat, np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)


def tree_structure(classifier: object, attack: object) -> TreeEnsemble:
    """The tree ensemble behind ``classifier``, or a CapabilityError naming ``attack``."""
    ensemble = getattr(classifier, "ensemble", None)
    if not isinstance(ensemble, TreeEnsemble):
        raise CapabilityError(
            f"{type(attack).__name__} needs a tree model's structure (a TreeClassifier); "
            f"{type(classifier).__name__} has none"
        )
    return ensemble
