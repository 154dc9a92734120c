"""Sampling-based extraction of tabular models: a surrogate tree ensemble trained on the
victim's labels for queries drawn inside the data's own rules.

Tramèr et al. (USENIX Security 2016) steal decision trees by retraining on queried inputs
when the API does not reveal leaf identities; Papernot-style synthetic queries fit images,
not tables. On a table the natural query distribution is the data's: :func:`schema_queries`
draws rows that a data contract accepts, each a pool row (the attacker's own records) with a
random subset of its mutable columns redrawn within the
:class:`~bastion.data.tabular.FeatureSchema` (uniform in a column's range, rounded for integer
columns, an allowed code for a categorical one, a one-hot vector for a group); immutable
columns keep the pool row's value. Without a pool, every mutable column is drawn.

:class:`TreeSampling` spends its budget in ``rounds``: the first half of the budget on pool
rows as they are (when there is a pool), the rest on redrawn rows, and after each round fits
a scikit-learn tree ensemble (histogram gradient boosting, or a random forest) on the
victim's labels. The surrogate is a bastion :class:`~bastion.models.trees.TreeEnsemble` (its
structure exposed for the exact tree attacks), wrapped as a torch module
(:class:`~bastion.models.trees.refit.TreeModule`) for the extraction contract.

Example
-------
>>> import numpy as np, torch
>>> from sklearn.datasets import load_breast_cancer
>>> from sklearn.ensemble import RandomForestClassifier
>>> from bastion.models.trees import from_trees
>>> X, y = load_breast_cancer(return_X_y=True)
>>> victim = from_trees(RandomForestClassifier(n_estimators=10, max_depth=4,
...                                            random_state=0).fit(X[:400], y[:400]))
>>> res = TreeSampling(query_budget=600, n_trees=30).extract(
...     victim, x_pool=torch.tensor(X[:300]), x_eval=torch.tensor(X[400:]))
>>> res.queries, res.fidelity > 0.9
(600, True)
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from bastion.attacks.extraction.base import ExtractionAttack, QueryOracle, Recorder, check_int
from bastion.attacks.extraction.equation_solving import _wants_float32
from bastion.errors import ConfigurationError, InputError

__all__ = ["TreeSampling", "schema_queries"]


def schema_queries(
    schema: Any, n: int, rng: np.random.Generator, pool: np.ndarray | None = None,
    *, share: float = 0.5, low: np.ndarray | None = None, high: np.ndarray | None = None,
) -> np.ndarray:
    """``n`` rows the schema accepts: pool rows with about ``share`` of their mutable columns
    redrawn (every column without a pool). ``low``/``high`` stand in for a column's
    infinite schema bounds (default: the pool's range)."""
    d = schema.n_features
    lo = np.where(np.isfinite(schema.low), schema.low, np.nan)
    hi = np.where(np.isfinite(schema.high), schema.high, np.nan)
    if pool is not None and len(pool):
        lo = np.where(np.isnan(lo), pool.min(axis=0), lo)
        hi = np.where(np.isnan(hi), pool.max(axis=0), hi)
    if low is not None:
        lo = np.where(np.isnan(lo), low, lo)
    if high is not None:
        hi = np.where(np.isnan(hi), high, hi)
    if np.isnan(lo).any() or np.isnan(hi).any():
        bad = schema.names[int(np.flatnonzero(np.isnan(lo) | np.isnan(hi))[0])]
        raise InputError(f"column {bad!r} has no finite range to draw queries from; give the "
                         "contract a range for it or the attacker a pool of rows")
    if pool is not None and len(pool):
        base = pool[rng.integers(0, len(pool), n)].astype(np.float64)
        redraw = rng.random((n, d)) < share
    else:
        base = (lo + hi) / 2 * np.ones((n, d))
        redraw = np.ones((n, d), dtype=bool)
    grouped = schema.grouped()
    fresh = lo + (hi - lo) * rng.random((n, d))
    fresh = np.where(schema.integer & ~grouped, np.round(fresh), fresh)
    for i, codes in schema.categories.items():
        fresh[:, i] = codes[rng.integers(0, len(codes), n)]
    mutable = ~schema.immutable
    out = np.where(redraw & mutable & ~grouped, fresh, base)
    for g in schema.groups:
        cols = list(g)
        if schema.immutable[cols].any():
            continue
        hit = redraw[:, cols].any(axis=1)
        onehot = np.eye(len(cols))[rng.integers(0, len(cols), n)]
        out[np.ix_(hit, cols)] = onehot[hit]
    return np.clip(out, np.minimum(lo, out), np.maximum(hi, out))


class TreeSampling(ExtractionAttack):
    """Steal a tabular model into a tree ensemble (see the module docstring).

    Parameters
    ----------
    query_budget: the queries to spend (all of them).
    schema: the :class:`~bastion.data.tabular.FeatureSchema` queries respect (default: no
        rules but the pool's ranges).
    surrogate: ``"boosting"`` (scikit-learn's histogram gradient boosting) or ``"forest"``.
    n_trees, max_depth: the surrogate's size (``max_depth`` ``None``: unlimited).
    rounds: fits of the surrogate (points of the fidelity curve).
    share: the fraction of a pool row's columns redrawn in a synthetic query.
    """

    name: ClassVar[str] = "tree-sampling"

    def __init__(
        self,
        *,
        query_budget: int,
        schema: Any = None,
        surrogate: Literal["boosting", "forest"] = "boosting",
        n_trees: int = 100,
        max_depth: int | None = None,
        rounds: int = 3,
        share: float = 0.5,
        batch_size: int = 1024,
        seed: int | None = 0,
    ) -> None:
        super().__init__(query_budget=query_budget, batch_size=batch_size, seed=seed)
        if surrogate not in ("boosting", "forest"):
            raise ConfigurationError(f"surrogate must be boosting or forest, got {surrogate!r}")
        check_int(n_trees, "n_trees")
        check_int(rounds, "rounds")
        if max_depth is not None:
            check_int(max_depth, "max_depth")
        if not 0.0 < share <= 1.0:
            raise ConfigurationError(f"share must be in (0, 1], got {share!r}")
        self.schema = schema
        self.surrogate = surrogate
        self.n_trees = n_trees
        self.max_depth = max_depth
        self.rounds = rounds
        self.share = share

    def _run(
        self,
        oracle: QueryOracle,
        x_pool: torch.Tensor | None,
        generator: torch.Generator,
        record: Recorder,
    ) -> nn.Module:
        from bastion.data.tabular import FeatureSchema

        victim = oracle.victim
        if len(victim.input_shape) != 1:
            raise InputError(
                f"tree-sampling extraction steals tabular models (one row of features); this "
                f"victim takes inputs of shape {tuple(victim.input_shape)}"
            )
        d = int(victim.input_shape[0])
        schema = self.schema if self.schema is not None else FeatureSchema.unconstrained(d)
        if schema.n_features != d:
            raise ConfigurationError(
                f"the schema has {schema.n_features} columns but the victim takes {d}")
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        pool = None if x_pool is None else x_pool.reshape(len(x_pool), d).double().numpy()
        lo, hi = victim.bounds
        box = (np.full(d, float(lo)), np.full(d, float(hi)))
        as_float32 = _wants_float32(victim)
        total = oracle.remaining
        natural = 0 if pool is None else min(len(pool), total // 2)
        order = rng.permutation(len(pool)) if pool is not None else np.array([], dtype=int)
        xs: list[np.ndarray] = []
        ys: list[np.ndarray] = []
        sent = used_natural = 0
        model: nn.Module | None = None
        for r in range(self.rounds):
            want = total * (r + 1) // self.rounds - sent
            if want <= 0:
                continue
            take = min(want, natural - used_natural)
            parts = []
            if take > 0 and pool is not None:
                parts.append(pool[order[used_natural:used_natural + take]])
                used_natural += take
            if want - max(take, 0) > 0:
                parts.append(schema_queries(schema, want - max(take, 0), rng, pool,
                                            share=self.share, low=box[0], high=box[1]))
            batch = np.concatenate(parts)
            xt = torch.from_numpy(batch)
            xs.append(batch)
            ys.append(oracle.labels(xt.float() if as_float32 else xt).numpy())
            sent += len(batch)
            model = self._fit(np.concatenate(xs), np.concatenate(ys), victim.num_classes)
            record(model)
        if model is None:  # pragma: no cover - a budget of >= 1 query always runs a round
            raise InputError("tree-sampling extraction had no query to spend")
        return model

    def _fit(self, x: np.ndarray, y: np.ndarray, k: int) -> nn.Module:
        from bastion.models.trees.refit import TreeTrainer

        family = "random-forest" if self.surrogate == "forest" else "hist-gradient-boosting"
        trainer = TreeTrainer(family=family, n_trees=self.n_trees, num_classes=k,
                              max_depth=self.max_depth)
        return trainer.fit(x, y, 0 if self.seed is None else int(self.seed))
