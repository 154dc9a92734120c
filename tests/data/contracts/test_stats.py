"""Closed-form checks of the statistics behind the drift tests."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from bastion.data.contracts._stats import (
    benjamini_hochberg,
    chi2_test,
    ks_test,
    make_sketch,
    psi_categorical,
    psi_numeric,
    sketch_cdf,
)


def test_benjamini_hochberg_known_values():
    q = benjamini_hochberg([0.01, 0.04, 0.03, 0.5])
    np.testing.assert_allclose(q, [0.04, 0.16 / 3, 0.16 / 3, 0.5], rtol=1e-9)
    np.testing.assert_allclose(q, stats.false_discovery_control([0.01, 0.04, 0.03, 0.5]))


def test_exact_sketch_ks_equals_two_sample_statistic():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 17, 900).astype(float)
    batch = rng.integers(5, 17, 150).astype(float)
    sk = make_sketch(ref)
    assert sk is not None and sk.exact
    d, p = ks_test(sk, ref.size, batch)
    assert d == pytest.approx(stats.ks_2samp(ref, batch).statistic, abs=1e-4)
    assert p < 1e-3


def test_quantile_sketch_tracks_the_cdf():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=5000)
    sk = make_sketch(ref)
    assert sk is not None and not sk.exact and len(sk.values) == 101
    grid = np.linspace(-2, 2, 9)
    np.testing.assert_allclose(sketch_cdf(sk, grid), stats.norm.cdf(grid), atol=0.03)
    d, p = ks_test(sk, ref.size, rng.normal(size=300))
    assert p > 0.01 and d < 0.1
    d, p = ks_test(sk, ref.size, rng.normal(0.5, 1.0, 300))
    assert p < 1e-6 and d == pytest.approx(stats.norm.cdf(0.25) - stats.norm.cdf(-0.25), abs=0.08)


def test_psi_and_chi2():
    rng = np.random.default_rng(2)
    sk = make_sketch(rng.normal(size=4000))
    assert sk is not None
    assert psi_numeric(sk, rng.normal(size=4000)) < 0.02
    assert psi_numeric(sk, rng.normal(1.0, 1.0, 4000)) > 0.5
    ref = {"a": 500, "b": 300, "c": 200}
    assert psi_categorical(ref, {"a": 50, "b": 30, "c": 20}) == pytest.approx(0.0, abs=1e-12)
    stat, p = chi2_test(ref, {"a": 20, "b": 30, "c": 50})
    table = np.array([[500, 300, 200], [20, 30, 50]])
    expected = stats.chi2_contingency(table, correction=False)
    assert stat == pytest.approx(expected.statistic) and p == pytest.approx(expected.pvalue)
    assert chi2_test({"a": 10}, {"a": 3}) is None
