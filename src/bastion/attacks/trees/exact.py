"""Exact attacks and certificates for tree ensembles, row by row through :class:`TreeMILP`.

>>> import numpy as np
>>> from sklearn.datasets import load_iris
>>> from sklearn.ensemble import RandomForestClassifier
>>> from bastion.models.trees import to_ensemble
>>> X, y = load_iris(return_X_y=True)
>>> ens = to_ensemble(RandomForestClassifier(5, max_depth=3, random_state=0).fit(X, y))
>>> out = minimal_perturbation(ens, X[:3], y[:3], norm="linf")
>>> [s.status for s in out]
['adversarial', 'adversarial', 'adversarial']
>>> bool(np.all(ens.predict(np.stack([s.x_adv for s in out])) != y[:3]))
True
>>> cert = certify(ens, X[:3], y[:3], eps=0.05)
>>> cert.certified_accuracy <= 1.0
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from bastion.attacks.evasion.base import EvasionAttack
from bastion.attacks.trees._milp import ExactSolution, TreeMILP, tree_structure
from bastion.data.tabular import FeatureSchema
from bastion.errors import ConfigurationError, InputError
from bastion.models.base import Capability, Classifier
from bastion.models.trees import TreeEnsemble
from bastion.threat import Norm

_CERT_TOL = 1e-5

__all__ = ["Certification", "ExactTreeAttack", "certify", "minimal_perturbation"]


def _rows(ensemble: TreeEnsemble, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(x, dtype=np.float64)
    if X.ndim == 1:
        X = X[None, :]
    if X.ndim != 2 or X.shape[1] != ensemble.n_features:
        raise InputError(f"x must have shape (n, {ensemble.n_features}), got {X.shape}")
    if not np.all(np.isfinite(X)):
        raise InputError("x contains NaN or infinite values")
    labels = np.asarray(y, dtype=np.int64).reshape(-1)
    if labels.shape[0] != X.shape[0]:
        raise InputError(f"{labels.shape[0]} labels for {X.shape[0]} rows")
    if labels.size and (labels.min() < 0 or labels.max() >= ensemble.n_classes):
        raise InputError(f"labels must lie in [0, {ensemble.n_classes - 1}]")
    return X, labels


def _check_rules(schema: FeatureSchema | None, X: np.ndarray) -> None:
    if schema is not None:
        bad = schema.check(X)
        if bad.any():
            raise InputError(
                f"{int((bad > 0).sum())} row(s) already break the schema's rules; exact "
                "distances are measured from rows the contract accepts"
            )


def minimal_perturbation(
    ensemble: TreeEnsemble,
    x: Any,
    y: Any,
    *,
    norm: str = "linf",
    schema: FeatureSchema | None = None,
    upper: float | None = None,
    time_limit: float | None = None,
    warm_start: bool = True,
) -> list[ExactSolution]:
    """The exact minimal perturbation of each row within ``schema`` (see :class:`TreeMILP`).

    ``warm_start`` (L∞) first runs the fast cell search; its distance prunes every cell
    farther than it from the MILP, which stays exact (see :meth:`TreeMILP.solve`).
    """
    X, labels = _rows(ensemble, x, y)
    _check_rules(schema, X)
    solver = TreeMILP(ensemble, schema=schema, norm=norm, time_limit=time_limit)
    solver.prime(X)
    hints: list[float | None] = [None] * X.shape[0]
    points: list[np.ndarray | None] = [None] * X.shape[0]
    if warm_start and norm == "linf":
        from bastion.attacks.trees.fast import fast_tree_attack

        fast = fast_tree_attack(ensemble, X, labels, schema=schema, max_steps=50)
        hints = [float(d) if f else None for f, d in zip(fast.found, fast.distance, strict=True)]
        points = [fast.x_adv[i] if fast.found[i] else None for i in range(X.shape[0])]
    return [
        solver.solve(X[i], int(labels[i]), upper=upper, hint=hints[i], hint_x=points[i])
        for i in range(X.shape[0])
    ]


@dataclass(frozen=True)
class Certification:
    """Certified robust accuracy at ``eps``: rows correctly classified with a certificate.

    ``certified[i]``: no input the rules allow within ``eps`` changes row ``i``'s (correct)
    prediction. ``undecided`` rows hit the solver's time limit (counted as not certified).
    ``ci`` is a Clopper–Pearson 95% interval of ``certified_accuracy``.
    """

    eps: float
    norm: str
    certified: np.ndarray
    correct: np.ndarray
    undecided: np.ndarray
    distances: np.ndarray
    ci: tuple[float, float]
    ci_method: str = "clopper-pearson"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def certified_accuracy(self) -> float:
        return float(self.certified.mean()) if self.certified.size else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "eps": self.eps,
            "norm": self.norm,
            "n": int(self.certified.size),
            "clean_accuracy": float(self.correct.mean()) if self.correct.size else 0.0,
            "certified_accuracy": self.certified_accuracy,
            "ci": list(self.ci),
            "ci_method": self.ci_method,
            "undecided": int(self.undecided.sum()),
        }


def certify(
    ensemble: TreeEnsemble,
    x: Any,
    y: Any,
    *,
    eps: float,
    norm: str = "linf",
    schema: FeatureSchema | None = None,
    time_limit: float | None = None,
    budget_s: float | None = None,
    known: Any = None,
) -> Certification:
    """Certified robust accuracy at ``eps``: the fraction of rows proven robust.

    Each correctly classified row is searched for an adversarial example within ``eps`` only
    (a bounded MILP): none found means certified, so a report can say "at least X% are robust".
    Rows whose exact distance lies within ``1e-5 * max(1, eps)`` above ``eps`` (the solver's
    tolerance) are conservatively left uncertified.

    ``known`` (per row, optional): the distance of an adversarial example an attack already
    found (``inf`` or ``None``: none); rows with one within ``eps`` need no solve. ``budget_s``
    bounds the whole run: rows not reached in time are ``undecided`` and not certified, so the
    figure stays a lower bound. ``time_limit`` bounds each solve.
    """
    import time

    from bastion.attacks.inference.metrics import clopper_pearson

    if not (math.isfinite(eps) and eps >= 0):
        raise ConfigurationError(f"eps must be a finite number >= 0, got {eps!r}")
    if budget_s is not None and not budget_s > 0:
        raise ConfigurationError(f"budget_s must be > 0 seconds, got {budget_s!r}")
    X, labels = _rows(ensemble, x, y)
    _check_rules(schema, X)
    n = X.shape[0]
    known_d = np.full(n, np.inf)
    if known is not None:
        given = np.array([np.inf if v is None else float(v) for v in known], dtype=np.float64)
        if given.shape != (n,):
            raise InputError(f"known must hold one distance per row ({n}), got {given.shape}")
        known_d = np.where(np.isnan(given), np.inf, given)
    # The solver's feasibility tolerance is ~1e-6: search slightly past eps, and certify only
    # rows whose exact distance (recomputed from the chosen cells) clears eps by that margin.
    tol = _CERT_TOL * max(1.0, float(eps))
    correct = ensemble.predict(X) == labels
    certified = np.zeros(n, dtype=bool)
    undecided = np.zeros(n, dtype=bool)
    distances = np.where(correct, known_d, 0.0)
    deadline = None if budget_s is None else time.perf_counter() + budget_s
    solver: TreeMILP | None = None
    for i in np.flatnonzero(correct & (known_d > eps + tol)):
        if deadline is not None and time.perf_counter() > deadline:
            undecided[i] = True
            continue
        if solver is None:
            solver = TreeMILP(ensemble, schema=schema, norm=norm, time_limit=time_limit)
            solver.prime(X[correct & (known_d > eps + tol)])
        sol = solver.solve(X[i], int(labels[i]), upper=eps + 2 * tol)
        undecided[i] = sol.status == "timeout"
        certified[i] = sol.status == "robust" or (
            sol.status != "timeout" and sol.distance > eps + tol
        )
        distances[i] = min(distances[i], sol.distance)
    lo, hi = clopper_pearson(int(certified.sum()), int(n))
    return Certification(
        eps=float(eps),
        norm=norm,
        certified=certified,
        correct=correct,
        undecided=undecided,
        distances=distances,
        ci=(float(lo), float(hi)),
    )


class ExactTreeAttack(EvasionAttack):
    """The exact minimal perturbation of a tree ensemble as an evasion attack.

    Needs a :class:`~bastion.models.trees.TreeClassifier` (its ``ensemble``). The rules are the
    ``constraints`` schema passed to :meth:`generate` (none: every feature is free).
    ``extra["exact_distances"]`` holds the minimal distances (``inf``: robust within the
    rules), which are certificates. With ``eps``, success means a distance within ``eps``.
    """

    name: ClassVar[str] = "tree-exact"
    requires: ClassVar[Capability] = Capability.SCORES
    norms: ClassVar[tuple[Norm, ...]] = (Norm.LINF, Norm.L2)
    minimum_norm: ClassVar[bool] = True
    supports_targeted: ClassVar[bool] = False

    def __init__(
        self,
        *,
        norm: str | Norm = "linf",
        eps: float | None = None,
        time_limit: float | None = None,
        batch_size: int = 256,
        seed: int | None = 0,
    ) -> None:
        super().__init__(norm=norm, eps=eps, batch_size=batch_size, seed=seed)
        if time_limit is not None and not (isinstance(time_limit, int | float) and time_limit > 0):
            raise ConfigurationError(f"time_limit must be > 0 seconds, got {time_limit!r}")
        self.time_limit = time_limit

    def _reset(self) -> None:
        self._distances: list[float] = []
        self._statuses: list[str] = []

    def _run(
        self,
        classifier: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        ensemble = tree_structure(classifier, self)
        schema = getattr(self, "_constraints", None)
        sols = minimal_perturbation(
            ensemble,
            x.detach().cpu().double().numpy(),
            y.cpu().numpy(),
            norm=self.norm.value,
            schema=schema,
            time_limit=self.time_limit,
        )
        self._distances.extend(s.distance for s in sols)
        self._statuses.extend(s.status for s in sols)
        out = np.stack([s.x_adv for s in sols])
        return torch.as_tensor(out, dtype=x.dtype, device=x.device)

    def _result_extra(self) -> dict[str, Any]:
        return {
            "exact_distances": [d if math.isfinite(d) else None for d in self._distances],
            "status": list(self._statuses),
        }
