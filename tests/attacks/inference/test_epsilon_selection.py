"""The empirical ε lower bound agrees with AUC and TPR at low FPR: picking the best threshold
after seeing the scores is corrected for, so a near-chance attack does not report a large ε."""

from __future__ import annotations

import numpy as np

from bastion.attacks.inference.metrics import empirical_epsilon, roc_curve


def _bound(members: np.ndarray, non_members: np.ndarray) -> tuple[float, float, float]:
    s = np.r_[members, non_members]
    y = np.r_[np.ones(len(members), bool), np.zeros(len(non_members), bool)]
    r = roc_curve(s, y)
    return r.auc, r.tpr_at(0.01), empirical_epsilon(r.tpr, r.fpr, r.n_pos, r.n_neg).lower


def test_a_near_chance_attack_gives_no_large_epsilon() -> None:
    # an overfit model's loss scores: every member fits, 6% of non-members are misclassified
    rng = np.random.default_rng(0)
    n = 400
    members = -np.abs(rng.normal(0.0, 0.01, n))
    non_members = -np.abs(rng.normal(0.0, 0.011, n))
    non_members[:24] = -rng.uniform(1.0, 5.0, 24)
    auc, tpr1, eps = _bound(members, non_members)
    assert auc < 0.58 and tpr1 < 0.02
    # uncorrected, the threshold under the weakest member (0 false negatives) gave ε ≈ 1.5
    assert eps < 0.25


def test_a_real_leak_still_shows() -> None:
    rng = np.random.default_rng(1)
    auc, tpr1, eps = _bound(rng.normal(3.0, 1.0, 400), rng.normal(0.0, 1.0, 400))
    assert auc > 0.95 and tpr1 > 0.3
    assert eps > 2.0


def test_one_fixed_test_keeps_the_plain_interval() -> None:
    # 500 of 1000 members flagged, no non-member: log(TPR_lo / FPR_hi) at 95%, uncorrected
    assert round(empirical_epsilon(0.5, 0.0, 1000, 1000).lower, 2) == 4.85
