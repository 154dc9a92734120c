"""Drift detectors and the windowed monitor: closed forms, injected drift, stable streams."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from scipy import special, stats
from sklearn.datasets import load_breast_cancer

from bastion.data import load_mnist
from bastion.errors import ConfigurationError, InputError
from bastion.monitor import (
    ChiSquareDrift,
    DriftMonitor,
    DriftResult,
    KSDrift,
    MMDDrift,
    PSIDrift,
)
from bastion.monitor.drift import make_detector

WINDOW = 250


@pytest.fixture(scope="module")
def mnist() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shuffled MNIST test set split in a 5,000-image reference and a 5,000-image stream.

    Shuffling matters: the first half of the MNIST test set is cleaner than the second.
    """
    data = load_mnist()
    perm = torch.randperm(len(data.x), generator=torch.Generator().manual_seed(0))
    x, y = data.x[perm], data.y[perm]
    return x[:5000], y[:5000], x[5000:], y[5000:]


def _tabular(n: int, rng: np.random.Generator) -> np.ndarray:
    """A fixed tabular distribution: correlated Gaussians, a skewed column, an integer column."""
    z = rng.normal(size=(n, 4))
    mix = np.array([[1.0, 0.5, 0.0, 0.0], [0.0, 1.0, 0.3, 0.0], [0.0, 0.0, 1.0, 0.2],
                    [0.0, 0.0, 0.0, 1.0]])
    return np.column_stack([z @ mix, rng.lognormal(size=n), rng.poisson(3.0, size=n)])


# --- closed forms ----------------------------------------------------------------------------


def test_ks_statistics_and_p_values_match_scipy() -> None:
    rng = np.random.default_rng(1)
    ref = np.column_stack([rng.normal(size=400), rng.integers(0, 5, size=400)])  # ties too
    batch = np.column_stack([rng.normal(0.2, size=150), rng.integers(0, 6, size=150)])
    det = KSDrift(ref, alpha=0.05, correction="bonferroni")
    res = det.test(batch)
    expected = [stats.ks_2samp(ref[:, j], batch[:, j], method="asymp") for j in range(2)]
    np.testing.assert_allclose(det.statistics(batch), [e.statistic for e in expected], atol=1e-12)
    assert res.statistic == pytest.approx(max(e.statistic for e in expected))
    # Stephens' approximation of the asymptotic p-value: a few per cent from scipy's kstwo
    assert res.p_value == pytest.approx(min(1.0, 2 * min(e.pvalue for e in expected)), rel=0.05)
    assert res.p_value < 0.05 and res.drift


def test_ks_fdr_uses_benjamini_hochberg() -> None:
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(500, 6))
    batch = rng.normal(size=(200, 6))
    batch[:, 0] += 0.3
    det = KSDrift(ref, correction="fdr")
    en = np.sqrt(500 * 200 / 700)
    p = special.kolmogorov((en + 0.12 + 0.11 / en) * det.statistics(batch))
    res = det.test(batch)
    p_sorted = np.sort(p)
    q_min = min(1.0, min(p_sorted[i] * 6 / (i + 1) for i in range(6)))  # BH q of the smallest p
    assert res.p_value == pytest.approx(q_min)


def test_chi2_matches_scipy_contingency() -> None:
    ref = np.repeat(np.arange(4), [100, 200, 300, 400])
    batch = np.repeat(np.arange(4), [40, 40, 60, 60])
    res = ChiSquareDrift(ref).test(batch)
    table = np.array([[100, 200, 300, 400], [40, 40, 60, 60]])
    expected = stats.chi2_contingency(table, correction=False)
    assert res.statistic == pytest.approx(expected.statistic)
    assert res.p_value == pytest.approx(expected.pvalue)


def test_chi2_counts_unseen_categories() -> None:
    ref = np.repeat(["cat", "dog"], 500)
    res = ChiSquareDrift(ref, alpha=0.01).test(np.array(["cat"] * 50 + ["dog"] * 30 + ["emu"] * 20))
    assert res.drift
    assert res.details["unseen_fraction"] == [0.2]


def test_psi_closed_form() -> None:
    ref = (np.arange(10000) + 0.5) / 10000  # deciles hold exactly 1,000 values each
    batch = np.repeat(np.arange(5) / 10 + 0.05, 20)  # 20% in each of the lower five deciles
    res = PSIDrift(ref, threshold=0.2).test(batch)
    expected = 5 * 0.1 * np.log(2.0) + 5 * (1e-4 - 0.1) * np.log(1e-4 / 0.1)
    assert res.statistic == pytest.approx(expected, rel=1e-9)
    assert res.drift and res.threshold == 0.2 and res.p_value is None


def test_mmd_statistic_matches_direct_computation() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(40, 3)), rng.normal(0.5, size=(30, 3))
    det = MMDDrift(x, bandwidth=1.5, n_permutations=50)
    k = lambda a, b: np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * 1.5**2))  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    expected = ((kxx.sum() - 40) / (40 * 39) + (kyy.sum() - 30) / (30 * 29)
                - 2 * kxy.mean())
    res = det.test(y)
    assert res.statistic == pytest.approx(expected, rel=1e-4)
    assert res.p_value is not None and 1 / 51 <= res.p_value <= 1.0


def test_mmd_median_heuristic_bandwidth() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(100, 4))
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))[np.triu_indices(100, 1)]
    assert MMDDrift(x).bandwidth_ == pytest.approx(np.median(d), rel=1e-6)


def test_mmd_p_value_is_uniform_under_h0() -> None:
    p_values = []
    for seed in range(50):
        rng = np.random.default_rng(100 + seed)
        det = MMDDrift(rng.normal(size=(120, 5)), n_permutations=100, seed=seed)
        p = det.test(rng.normal(size=(60, 5))).p_value
        assert p is not None
        p_values.append(p)
    p_arr = np.array(p_values)
    assert (p_arr < 0.05).mean() <= 0.15
    assert 0.3 <= (p_arr < 0.5).mean() <= 0.7


# --- injected drift on MNIST, detected within one window ----------------------------------------


def _shifted_windows(
    stream: torch.Tensor, labels: torch.Tensor
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Drifted windows of images and their labels (labels stand in for a model's predictions)."""
    w, wl = stream[:WINDOW], labels[:WINDOW]
    g = torch.Generator().manual_seed(1)
    low = labels < 5
    return {
        "brightened": ((w + 0.1).clamp(0.0, 1.0), wl),
        "noised": ((w + 0.1 * torch.randn(w.shape, generator=g)).clamp(0.0, 1.0), wl),
        "class-shift": (stream[low][:WINDOW], labels[low][:WINDOW]),  # digits 0-4 only
    }


# Covariate shifts are asserted on both input detectors. The class shift (digits 0-4 only) is
# asserted on MMD and on chi-square over the predicted labels: KS on raw pixels with a
# Bonferroni bar over 784 features caught it in 9 of 10 shuffles, too few to assert.
@pytest.mark.parametrize(
    ("kind", "method"),
    [("brightened", "ks"), ("brightened", "mmd"), ("noised", "ks"), ("noised", "mmd"),
     ("class-shift", "mmd"), ("class-shift", "chi2")],
)
def test_mnist_drift_detected_within_one_window(mnist, kind: str, method: str) -> None:  # type: ignore[no-untyped-def]
    ref, ref_labels, stream, labels = mnist
    images, predicted = _shifted_windows(stream, labels)[kind]
    detector, window = {
        "ks": lambda: (KSDrift(ref, alpha=1e-3), images),
        "mmd": lambda: (MMDDrift(ref[:1000], alpha=1e-3, n_permutations=1000, seed=0), images),
        "chi2": lambda: (ChiSquareDrift(ref_labels, alpha=1e-3), predicted),
    }[method]()
    monitor = DriftMonitor(detector, window=WINDOW)
    assert monitor.update(window[:100]) == []
    results = monitor.update(window[100:])
    assert len(results) == 1 and results[0].drift, (kind, method, results)


def test_mnist_stable_stream_raises_no_alarm_over_20_windows(mnist) -> None:  # type: ignore[no-untyped-def]
    ref, ref_labels, stream, labels = mnist
    detectors = [
        KSDrift(ref, alpha=1e-3),
        MMDDrift(ref[:1000], alpha=1e-3, n_permutations=1000, seed=0),
        PSIDrift(ref, alpha=1e-3, n_calibration=1000, reduce="random", dim=16),
    ]
    monitors = [DriftMonitor(d, window=WINDOW) for d in detectors]
    labels_monitor = DriftMonitor(ChiSquareDrift(ref_labels, alpha=1e-3), window=WINDOW)
    for start in range(0, 5000, 125):  # uneven arrival: two updates per window
        for m in monitors:
            m.update(stream[start:start + 125])
        labels_monitor.update(labels[start:start + 125])
    for m in [*monitors, labels_monitor]:
        assert m.windows_tested == 20
        assert m.drift_count == 0, [r.to_dict() for r in m.history if r.drift]


def test_predicted_label_shift_detected(mnist) -> None:  # type: ignore[no-untyped-def]
    _, ref_labels, _, labels = mnist
    shifted = torch.cat([labels[labels == 1][:60], labels[:190]])  # 1s over-represented
    res = ChiSquareDrift(ref_labels, alpha=1e-3).test(shifted)
    assert res.drift and res.p_value is not None and res.p_value < 1e-3


# --- tabular --------------------------------------------------------------------------------------


def test_tabular_stable_stream_and_shift() -> None:
    rng = np.random.default_rng(5)
    ref = _tabular(3000, rng)
    mu, sd = torch.tensor(ref.mean(0)).float(), torch.tensor(ref.std(0)).float()
    make = [
        lambda: KSDrift(ref, alpha=1e-3),
        lambda: KSDrift(ref, alpha=1e-3, correction="fdr"),
        lambda: PSIDrift(ref, alpha=1e-3, n_calibration=1000),
        # MMD's Gaussian kernel wants comparable scales: standardise by the reference
        lambda: MMDDrift(ref[:1000], alpha=1e-3, n_permutations=1000,
                         preprocess=lambda t: (t - mu) / sd),
    ]
    for factory in make:
        monitor = DriftMonitor(factory(), window=200)
        for _ in range(20):
            monitor.update(_tabular(200, rng))
        assert monitor.windows_tested == 20 and monitor.drift_count == 0, monitor.detector
        shifted = _tabular(200, rng)
        shifted[:, 1] += 0.75  # three quarters of a standard deviation on one column
        assert [r.drift for r in monitor.update(shifted)] == [True], monitor.detector


def test_breast_cancer_case_mix_shift() -> None:
    x, y = load_breast_cancer(return_X_y=True)
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm], y[perm]
    ref, rest, rest_y = x[:369], x[369:], y[369:]
    det = KSDrift(ref, alpha=0.01)
    assert not det.test(rest[:100]).drift  # same case mix
    malignant = rest[rest_y == 0][:60]  # only malignant cases arrive
    res = det.test(malignant)
    assert res.drift and res.details["n_drifted_features"] >= 5


# --- contract ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory",
    [
        lambda r: KSDrift(r, alpha=0.0),
        lambda r: KSDrift(r, alpha=1.5),
        lambda r: KSDrift(r, correction="holm"),
        lambda r: KSDrift(r, reduce="umap"),
        lambda r: KSDrift(r, reduce="pca", dim=0),
        lambda r: KSDrift(r, reduce="pca", dim=8),  # does not reduce 8 features
        lambda r: MMDDrift(r, alpha=0.001, n_permutations=100),
        lambda r: MMDDrift(r, bandwidth=-1.0),
        lambda r: PSIDrift(r, alpha=0.001, n_calibration=200),
        lambda r: PSIDrift(r, bins=1),
        lambda r: ChiSquareDrift(r.astype(int), correction="none"),
        lambda r: DriftMonitor(KSDrift(r), window=1),
        lambda r: DriftMonitor("ks", window=10),  # type: ignore[arg-type]
    ],
)
def test_bad_parameters_rejected(factory) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigurationError):
        factory(np.random.default_rng(0).normal(size=(50, 8)))


def test_bad_inputs_rejected() -> None:
    ref = np.random.default_rng(0).normal(size=(50, 8))
    det = KSDrift(ref)
    with pytest.raises(InputError, match="shape"):
        det.test(np.zeros((10, 7)))
    with pytest.raises(InputError, match="shape"):
        det.test(torch.zeros(10, 7).numpy().tolist())
    assert det.test(np.zeros((10, 2, 4))).details["n_features"] == 8  # same size, reshaped
    with pytest.raises(InputError, match="NaN"):
        det.test(np.full((10, 8), np.nan))
    with pytest.raises(InputError, match="empty"):
        det.test(np.zeros((0, 8)))
    with pytest.raises(InputError):
        MMDDrift(ref).test(np.zeros((1, 8)))
    monitor = DriftMonitor(det, window=20)
    monitor.update(np.zeros((5, 8)))
    with pytest.raises(InputError, match="shape"):
        monitor.update(np.zeros((5, 2, 4)))


def test_reduction_and_preprocess_apply_to_images(mnist) -> None:  # type: ignore[no-untyped-def]
    ref, _, stream, _ = mnist
    pca = KSDrift(ref[:1000], reduce="pca", dim=16)
    assert pca.n_features == 16 and pca.reference_.shape == (1000, 16)
    assert pca.test(stream[:WINDOW].numpy()).details["n_features"] == 16  # numpy in, same map
    pooled = KSDrift(ref[:1000], preprocess=lambda t: t[:, 0].mean(dim=2))  # row means
    assert pooled.n_features == 28
    assert pooled.test((stream[:WINDOW] + 0.1).clamp(0, 1)).drift


def test_deterministic_under_seed() -> None:
    rng = np.random.default_rng(6)
    ref, batch = rng.normal(size=(300, 3)), rng.normal(0.1, size=(100, 3))
    a = MMDDrift(ref, seed=3).test(batch)
    b = MMDDrift(ref, seed=3).test(batch)
    assert a == b
    t1 = PSIDrift(ref, seed=3).threshold_for(100)
    t2 = PSIDrift(ref, seed=3).threshold_for(100)
    assert t1 == t2


def test_result_is_frozen_and_serialisable() -> None:
    res = KSDrift(np.arange(100.0)).test(np.arange(50.0))
    assert isinstance(res, DriftResult)
    with pytest.raises(AttributeError):
        res.drift = True  # type: ignore[misc]
    d = res.to_dict()
    assert d["method"] == "ks" and isinstance(d["details"], dict)


def test_monitor_is_thread_safe() -> None:
    rng = np.random.default_rng(7)
    ref = rng.normal(size=(500, 2))
    monitor = DriftMonitor(KSDrift(ref, alpha=1e-3), window=50)
    chunks = [rng.normal(size=(7, 2)) for _ in range(80)]  # 560 samples
    results: list[DriftResult] = []
    lock = threading.Lock()

    def feed(part: list[np.ndarray]) -> None:
        for c in part:
            out = monitor.update(c)
            with lock:
                results.extend(out)

    threads = [threading.Thread(target=feed, args=(chunks[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == monitor.windows_tested == 11
    assert monitor.pending == 560 - 11 * 50
    assert all(r.details["n_batch"] == 50 for r in results)


def test_make_detector_by_name() -> None:
    ref = np.random.default_rng(8).normal(size=(200, 3))
    assert isinstance(make_detector("mmd", ref, n_permutations=50), MMDDrift)
    assert make_detector("ks", ref, correction="fdr").correction == "fdr"
    with pytest.raises(ConfigurationError, match="unknown drift method"):
        make_detector("wasserstein", ref)
    with pytest.raises(ConfigurationError, match="bad options"):
        make_detector("chi2", ref.astype(int), bins=3)
