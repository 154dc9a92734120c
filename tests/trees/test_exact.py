"""The MILP's minimal perturbations equal brute force on tiny ensembles; certificates hold."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import xgboost as xgb
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier

from bastion.attacks.trees import ExactTreeAttack, certify, minimal_perturbation
from bastion.data.tabular import FeatureSchema
from bastion.errors import ConfigurationError
from bastion.models.trees import from_trees, to_ensemble


def _tiny_data(seed: int, n_features: int = 3, n_classes: int = 2):
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 10, (80, n_features)).round(1)
    y = ((X[:, 0] + 0.5 * X[:, 1] - X[:, 2] + rng.normal(0, 2, 80)) > 2).astype(int)
    if n_classes == 3:
        y = np.digitize(X[:, 0] - X[:, 2] + rng.normal(0, 1, 80), [-2.0, 2.0])
    return X, y


def _brute_force(ens, x0, y, norm, schema):
    """Minimum over every cell of the threshold grid (a point inside each cell)."""
    axes, dists = [], []
    for i in range(ens.n_features):
        t = ens.thresholds(i)
        if schema.integer[i]:
            vals = np.arange(np.ceil(schema.low[i]), np.floor(schema.high[i]) + 1)
            d = np.abs(vals - x0[i])
        else:
            edges = np.concatenate([[-np.inf], t, [np.inf]])
            vals, d = [], []
            for a, b in itertools.pairwise(edges):
                a2, b2 = max(a, schema.low[i]), min(b, schema.high[i])
                if a2 >= b2:
                    continue
                lo = a2 if np.isfinite(a2) else b2 - 1.0
                hi = b2 if np.isfinite(b2) else a2 + 1.0
                inside = min(max(x0[i], lo), hi)
                # a point strictly inside the cell, and the distance to the cell's closure
                point = inside if lo < inside < hi else (lo + hi) / 2
                vals.append(point)
                d.append(max(a2 - x0[i], 0.0, x0[i] - b2))
            vals, d = np.array(vals), np.array(d)
        if schema.immutable[i]:
            vals, d = np.array([x0[i]]), np.array([0.0])
        axes.append(vals)
        dists.append(d * schema.cost[i])
    grid = np.array(list(itertools.product(*axes)))
    cost = np.array(list(itertools.product(*dists)))
    pred = ens.predict(grid)
    if norm == "linf":
        total = cost.max(axis=1)
    elif norm == "l1":
        total = cost.sum(axis=1)
    else:
        total = np.sqrt((cost**2).sum(axis=1))
    adv = pred != y
    return float(total[adv].min()) if adv.any() else np.inf


MODELS = {
    "xgboost": lambda: xgb.XGBClassifier(n_estimators=4, max_depth=2, n_jobs=1, random_state=0),
    "forest": lambda: RandomForestClassifier(n_estimators=4, max_depth=3, random_state=0),
    "gbm": lambda: GradientBoostingClassifier(n_estimators=4, max_depth=2, random_state=0),
}


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("norm", ["linf", "l1", "l2"])
def test_exact_equals_brute_force(model, norm):
    X, y = _tiny_data(1)
    ens = to_ensemble(MODELS[model]().fit(X, y))
    schema = FeatureSchema.unconstrained(3)
    sols = minimal_perturbation(ens, X[:12], y[:12], norm=norm)
    for x0, label, sol in zip(X[:12], y[:12], sols, strict=True):
        if sol.status == "misclassified":
            continue
        assert sol.status == "adversarial"
        assert sol.distance == pytest.approx(_brute_force(ens, x0, label, norm, schema), abs=1e-9)
        assert ens.predict(sol.x_adv[None])[0] != label  # the witness is real
        measured = np.abs(sol.x_adv - x0)
        got = {"linf": measured.max(), "l1": measured.sum(), "l2": np.sqrt((measured**2).sum())}
        assert got[norm] == pytest.approx(sol.distance, rel=1e-5, abs=1e-5)


def test_exact_within_rules_equals_brute_force():
    X, y = _tiny_data(2)
    X[:, 1] = np.round(X[:, 1])  # an integer feature
    ens = to_ensemble(MODELS["xgboost"]().fit(X, y))
    schema = FeatureSchema(
        names=("a", "b", "c"),
        low=np.array([0.0, 0.0, 0.0]),
        high=np.array([10.0, 10.0, 10.0]),
        integer=np.array([False, True, False]),
        immutable=np.array([False, False, True]),
        cost=np.array([2.0, 1.0, 1.0]),
        categories={},
        groups=(),
    )
    sols = minimal_perturbation(ens, X[:15], y[:15], norm="linf", schema=schema)
    for x0, label, sol in zip(X[:15], y[:15], sols, strict=True):
        expected = _brute_force(ens, x0, label, "linf", schema)
        if sol.status == "robust":
            assert expected == np.inf
            continue
        if sol.status == "misclassified":
            continue
        assert sol.distance == pytest.approx(expected, abs=1e-9)
        assert schema.check(sol.x_adv[None], x0[None])[0] == 0


def test_multiclass_exact_equals_brute_force():
    X, y = _tiny_data(3, n_classes=3)
    ens = to_ensemble(
        xgb.XGBClassifier(n_estimators=3, max_depth=2, n_jobs=1, random_state=0).fit(X, y)
    )
    schema = FeatureSchema.unconstrained(3)
    for x0, label, sol in zip(
        X[:10], y[:10], minimal_perturbation(ens, X[:10], y[:10]), strict=True
    ):
        if sol.status != "misclassified":
            assert sol.distance == pytest.approx(
                _brute_force(ens, x0, label, "linf", schema), abs=1e-9
            )


def test_certificates_are_never_contradicted():
    X, y = _tiny_data(4)
    model = xgb.XGBClassifier(n_estimators=10, max_depth=3, n_jobs=1, random_state=0).fit(X, y)
    ens = to_ensemble(model)
    rows, labels = X[:20], y[:20]
    exact = minimal_perturbation(ens, rows, labels)
    rng = np.random.default_rng(0)
    for eps in (0.2, 0.6, 1.5):
        cert = certify(ens, rows, labels, eps=eps)
        assert 0.0 <= cert.ci[0] <= cert.certified_accuracy <= cert.ci[1] <= 1.0
        # Certified rows: exact distance above eps, and random search in the ball never flips.
        for i in np.flatnonzero(cert.certified):
            assert exact[i].distance > eps
            noise = rng.uniform(-eps, eps, (400, 3))
            corners = rng.choice([-eps, eps], (400, 3))
            probes = rows[i] + np.vstack([noise, corners])
            assert np.all(ens.predict(probes) == labels[i])
        # Uncertified correct rows have an adversarial example within eps.
        for i in np.flatnonzero(cert.correct & ~cert.certified):
            assert exact[i].distance <= eps + 1e-5 * max(1.0, eps)


def test_exact_attack_class_runs_through_generate():
    X, y = _tiny_data(5)
    clf = from_trees(xgb.XGBClassifier(n_estimators=5, max_depth=2, n_jobs=1).fit(X, y))
    res = ExactTreeAttack().generate(clf, torch.tensor(X[:8]), torch.tensor(y[:8]))
    assert res.x_adv.dtype == torch.float64
    flipped = res.success & res.clean_correct
    assert bool(flipped[res.clean_correct].all())
    d = np.array([v for v in res.extra["exact_distances"]], dtype=float)
    np.testing.assert_allclose(
        res.distances.numpy()[flipped.numpy()], d[flipped.numpy()], rtol=1e-5, atol=1e-5
    )


def test_no_attack_beats_the_exact_minimum():
    from sklearn.datasets import load_breast_cancer

    from bastion.attacks.evasion.hopskipjump import HopSkipJump
    from bastion.attacks.trees import fast_tree_attack

    X, y = load_breast_cancer(return_X_y=True)
    X = X[:, :10]
    model = xgb.XGBClassifier(n_estimators=30, max_depth=4, n_jobs=1, random_state=0).fit(X, y)
    ens = to_ensemble(model)
    rows, labels = X[:15], y[:15]
    exact = np.array([s.distance for s in minimal_perturbation(ens, rows, labels)])
    fast = fast_tree_attack(ens, rows, labels)
    assert fast.found.all()
    assert np.all(ens.predict(fast.x_adv) != labels)
    assert np.all(fast.distance >= exact - 1e-9)
    # The fast search is near the optimum here (a regression guard, not a guarantee).
    assert np.median(fast.distance / np.maximum(exact, 1e-12)) <= 1.05
    clf = from_trees(model)
    hsj = HopSkipJump(norm="linf", max_queries=300).generate(
        clf, torch.tensor(rows), torch.tensor(labels)
    )
    ok = (hsj.success & hsj.clean_correct).numpy()
    assert np.all(hsj.distances.numpy()[ok] >= exact[ok] - 1e-9)


def test_proof_and_reduced_box_equal_the_full_milp():
    """The warm-started path (a box bound or a feasibility MILP proving the fast hint optimal,
    MILPs reduced to the box) gives the distances of the full formulation."""
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    X = X[:, :8]
    model = xgb.XGBClassifier(n_estimators=20, max_depth=3, n_jobs=1, random_state=0).fit(X, y)
    ens = to_ensemble(model)
    rows, labels = X[:10], ens.predict(X[:10])
    warm = minimal_perturbation(ens, rows, labels)
    full = minimal_perturbation(ens, rows, labels, warm_start=False)
    np.testing.assert_allclose(
        [s.distance for s in warm], [s.distance for s in full], rtol=1e-6, atol=1e-9
    )
    assert all(s.status == "adversarial" for s in warm)
    assert np.all(ens.predict(np.stack([s.x_adv for s in warm])) != labels)


def test_certify_uses_known_attacks_and_a_time_budget():
    X, y = _tiny_data(6)
    model = xgb.XGBClassifier(n_estimators=10, max_depth=3, n_jobs=1, random_state=0).fit(X, y)
    ens = to_ensemble(model)
    rows, labels = X[:20], y[:20]
    exact = np.array([s.distance for s in minimal_perturbation(ens, rows, labels)])
    plain = certify(ens, rows, labels, eps=0.6)
    informed = certify(ens, rows, labels, eps=0.6, known=exact)
    np.testing.assert_array_equal(plain.certified, informed.certified)
    late = certify(ens, rows, labels, eps=0.6, budget_s=1e-9)
    assert not late.certified.any()  # nothing reached in time is certified
    assert late.undecided.sum() == plain.correct.sum()
    with pytest.raises(ConfigurationError, match="budget_s"):
        certify(ens, rows, labels, eps=0.6, budget_s=0)
