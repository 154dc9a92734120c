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

import math
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from bastion.data.tabular import FeatureSchema
from bastion.errors import CapabilityError, ConfigurationError
from bastion.models.trees import TreeEnsemble

__all__ = ["ExactSolution", "TreeMILP", "feature_cells", "tree_structure"]

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

    # -- per row --------------------------------------------------------------------------
    def _intervals(self, i: int, x0: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        return feature_cells(self.ensemble, self.schema, i, x0, self.thresholds[i])

    def solve(
        self, x0: np.ndarray, y: int, *, upper: float | None = None, hint: float | None = None
    ) -> ExactSolution:
        """The minimal perturbation of row ``x0`` (true label ``y``) within the schema.

        ``upper`` bounds the search: a row with no adversarial example within it is reported
        ``robust`` with ``distance`` = ``upper`` (a certificate at that radius). ``hint`` is
        the distance of a known adversarial example (e.g. from the fast attack): cells farther
        than it cannot hold the optimum (a feature's own distance never exceeds the total),
        so they are pruned before the solve, which keeps it exact and makes it much smaller.
        """
        if hint is not None and math.isfinite(hint):
            bound = hint if upper is None else min(upper, hint)
            sol = self._solve(x0, y, upper=upper, prune=bound * (1 + 1e-7) + 1e-9)
            if sol.status in ("adversarial", "misclassified"):
                return sol
        return self._solve(x0, y, upper=upper, prune=upper)

    def _solve(
        self, x0: np.ndarray, y: int, *, upper: float | None, prune: float | None
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
        for i in self.thresholds:
            if i in self.o_index:
                continue
            feasible, cost, witness, own = self._intervals(i, float(x0[i]))
            if prune is not None:
                feasible = feasible & (cost <= prune * (1 + 1e-7) + 1e-9)
                feasible[own] = True
            per_feature[i] = (witness, own, cost)
            s, m = self.p_start[i], self.thresholds[i].size
            # Interval k is chosen iff p_{k+1} - p_k = 1 (p_0 = 0, p_{m+1} = 1).
            for k in (int(v) for v in np.flatnonzero(~feasible)):
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
            objective[self.b_index] = 1.0
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
            sol = self._solve_target(x0, y, target, rows, objective, per_feature, best)
            if sol is not None and (best is None or sol.distance < best.distance):
                best = sol
        seconds = time.perf_counter() - start
        if best is None:
            dist = math.inf if upper is None else float(upper)
            return ExactSolution("robust", dist, x0.copy(), None, seconds)
        return ExactSolution(best.status, best.distance, best.x_adv, best.target, seconds)

    def _class_row(self, y: int, target: int) -> tuple[list[int], list[float], float]:
        """``score_target - score_y >= margin`` as a row over leaf variables."""
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
        nz = np.flatnonzero(coef)
        return list(self._leaf_cols[nz]), list(coef[nz]), margin - const

    def _solve_target(
        self,
        x0: np.ndarray,
        y: int,
        target: int,
        rows: list[tuple[list[int], list[float], float, float]],
        objective: np.ndarray,
        per_feature: dict[int, tuple[np.ndarray, int, np.ndarray]],
        best: ExactSolution | None,
    ) -> ExactSolution | None:
        cols, coefs, lb = self._class_row(y, target)
        extra = [*rows, (cols, coefs, lb, np.inf)]
        if best is not None and self.norm == "linf":
            extra.append(([self.b_index], [1.0], -np.inf, best.distance))
        mat, lo, hi = _assemble(extra, self.n_vars)
        A = sparse.vstack([self._structure[0], mat]).tocsr()
        integrality = np.zeros(self.n_vars)
        integrality[: self.b_index - self.leaves.size] = 1  # predicates and one-hot binaries
        ub = np.ones(self.n_vars)
        ub[self.b_index] = np.inf
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
            bounds=Bounds(np.zeros(self.n_vars), ub),
            options=options,
        )
        if res.x is None:
            if res.status == 1:  # time limit without a solution
                return ExactSolution("timeout", math.inf, x0.copy(), target, 0.0)
            return None  # infeasible: no adversarial example for this target
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
    f32 = ens.float32
    m = t.size
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
    own = int(np.sum(~ens.goes_left(np.full(m, x0), t)))  # thresholds x0 passes right
    codes = schema.allowed_values(i)
    if codes is not None:
        inside = (codes[None, :] >= lo_att[:, None]) & (codes[None, :] <= hi_att[:, None])
        dist = np.where(inside, np.abs(codes[None, :] - x0), np.inf)
        feasible = np.asarray(inside.any(axis=1), dtype=bool)
        witness = codes[np.argmin(dist, axis=1)]
        cost = np.where(feasible, dist.min(axis=1), 0.0)
    else:
        if schema.integer[i]:
            lo_att, hi_att = np.ceil(lo_att), np.floor(hi_att)
            lo_inf, hi_inf = lo_att, hi_att
        feasible = np.asarray(lo_att <= hi_att, dtype=bool)
        witness = np.clip(x0, lo_att, hi_att)
        cost = np.where(feasible, np.maximum(np.maximum(lo_inf - x0, 0.0), x0 - hi_inf), 0.0)
    cost = np.where(feasible, cost, 0.0)
    witness = np.where(feasible, witness, x0)
    cost[own], witness[own], feasible[own] = 0.0, x0, True
    if schema.immutable[i]:
        feasible = np.zeros(m + 1, dtype=bool)
        feasible[own] = True
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
